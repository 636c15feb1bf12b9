/**
 * islo sandbox names. islo has no labels, only a caller-chosen name (and a
 * `name_prefix` filter on its list call), so the name carries the ownership
 * labels: the owning worker (read back by any worker's reaper to ask the
 * heartbeats), the job and its attempt, so a create retried after a lost
 * answer asks for the same name and its 409 means "ours". A sandbox for no
 * job (tests, tools) gets a random tag instead of the attempt.
 *
 *   sq-<len36>-<worker label>-<job part>-a<attempt>
 *
 * The worker label's length comes first because labels may hold "-".
 */
import { createHash, randomBytes } from "node:crypto";

export const NAME_PREFIX = "sq-";

function jobPart(jobLabel: string | undefined): string {
  if (!jobLabel) return "nojob";
  if (jobLabel.length <= 24) return jobLabel;
  return `${jobLabel.slice(0, 13).replace(/[^A-Za-z0-9]+$/, "")}-${createHash("sha256").update(jobLabel).digest("hex").slice(0, 10)}`;
}

export function sandboxName(workerLabel: string, jobLabel: string | undefined, attempt?: number): string {
  const tail = jobLabel && attempt !== undefined ? `a${attempt}` : randomBytes(4).toString("hex");
  return `${NAME_PREFIX}${workerLabel.length.toString(36)}-${workerLabel}-${jobPart(jobLabel)}-${tail}`;
}

/** The owner's worker label of a sandbox we named, or null for any other name. */
export function ownerOf(name: string): string | null {
  const m = /^sq-([0-9a-z]{1,2})-/.exec(name);
  if (!m) return null;
  const len = parseInt(m[1]!, 36);
  const start = m[0].length;
  const label = name.slice(start, start + len);
  if (label.length !== len || name[start + len] !== "-") return null;
  return label;
}
