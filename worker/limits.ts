/**
 * A job's effective limits: the spec's values, else the worker's defaults,
 * never above the worker's maximums. A spec asking for more than the maximum
 * is refused (not clamped), so a job never runs under limits it did not ask for.
 */
import { ErrorCodes, SpecError } from "../errors/index.js";
import type { Limits, ResolvedLimits } from "../producer/job-spec.js";

export function resolveLimits(asked: Limits, defaults: ResolvedLimits, max: ResolvedLimits): ResolvedLimits {
  const out = { ...defaults };
  const problems: string[] = [];
  for (const key of Object.keys(defaults) as (keyof ResolvedLimits)[]) {
    const v = asked[key];
    if (v === undefined) continue;
    if (v > max[key]) problems.push(`limits.${key}: ${v} is above this worker's maximum of ${max[key]}`);
    else out[key] = v;
  }
  if (problems.length) {
    throw new SpecError(ErrorCodes.LIMIT_ABOVE_MAX, problems.join("; "), { details: { problems } });
  }
  return out;
}
