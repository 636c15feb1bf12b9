/**
 * Names of sandboxes on remote services, and who owns them. Neither
 * microsandbox nor deer-flow's provisioner keeps labels, and their list
 * calls answer names only, so the name carries what a reaper needs:
 *
 *   <prefix>-<owner tag>-<job tag>-a<attempt>     e.g. sq-3f9a0c1b2d-7e4c...-a2
 *
 * - owner tag: 10 hex of sha256(the worker's label-safe id);
 * - job tag: 12 hex of sha256(job id), or random for a sandbox not made for
 *   a job (tests, benches);
 * - attempt: the job's attempt (a create sent twice makes one sandbox; the
 *   next attempt gets a fresh one).
 * 3 + 10 + 12 + digits: short enough for a Kubernetes Service name
 * (`sandbox-<id>-svc` <= 63 characters) and lowercase only.
 *
 * A reaper maps owner tags back to workers through the heartbeat keys of
 * the live workers (`OwnerDirectory`): a tag no live worker has is dead.
 */
import { createHash, randomBytes } from "node:crypto";
import { LABEL_JOB, labelSafe, type OwnerLiveness, type SandboxSpec } from "../provider.js";

/** What a heartbeat store can tell besides OwnerLiveness: every live worker's label (worker/heartbeat.ts). */
export interface OwnerDirectory {
  liveOwnerLabels(): Promise<ReadonlySet<string>>;
}

function hex(s: string, n: number): string {
  return createHash("sha256").update(s).digest("hex").slice(0, n);
}

export function ownerTag(workerId: string): string {
  return hex(labelSafe(workerId), 10);
}

export function sandboxName(prefix: string, workerId: string, spec: Pick<SandboxSpec, "labels" | "attempt">): string {
  const job = spec.labels[LABEL_JOB];
  const jobTag = job === undefined ? randomBytes(6).toString("hex") : hex(job, 12);
  return `${prefix}-${ownerTag(workerId)}-${jobTag}-a${spec.attempt ?? 1}`;
}

/** The owner tag of one of our sandbox names; null for names not ours. */
export function ownerTagOf(prefix: string, name: string): string | null {
  const m = new RegExp(`^${prefix.replace(/[^a-z0-9]/g, "\\$&")}-([0-9a-f]{10})-[0-9a-f]{12}-a\\d+$`).exec(name);
  return m ? m[1]! : null;
}

/**
 * Owner tags among `tags` whose worker has no heartbeat; null when that
 * cannot be told (no heartbeat store, or one that cannot list live
 * workers): then nothing is reaped.
 */
export async function deadOwnerTags(owners: OwnerLiveness | undefined, tags: Iterable<string>): Promise<Set<string> | null> {
  const dir = owners as Partial<OwnerDirectory> | undefined;
  if (!dir || typeof dir.liveOwnerLabels !== "function") return null;
  const live = new Set([...(await dir.liveOwnerLabels())].map((l) => hex(l, 10)));
  return new Set([...tags].filter((t) => !live.has(t)));
}

/**
 * Which of `names` (a service's list) are ours, made by another worker that
 * has no heartbeat: what a reap removes. Empty when liveness cannot be told.
 */
export async function namesOfDeadOwners(prefix: string, ownTag: string, names: readonly string[], owners: OwnerLiveness | undefined): Promise<string[]> {
  const tagged = names.map((n) => ({ n, tag: ownerTagOf(prefix, n) })).filter((x): x is { n: string; tag: string } => x.tag !== null && x.tag !== ownTag);
  const dead = await deadOwnerTags(owners, tagged.map((x) => x.tag));
  return dead ? tagged.filter((x) => dead.has(x.tag)).map((x) => x.n) : [];
}
