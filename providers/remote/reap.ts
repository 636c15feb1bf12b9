/**
 * Reaping by heartbeat on services whose list call answers labels (e2b,
 * superserve) or records (northflank's leases): what another worker left
 * behind is removed once that worker has no heartbeat. A failed removal is
 * not an error: the next pass tries again.
 */
import type { OwnerLiveness } from "../provider.js";

/** Of `listed`, those another worker made (by `workerOf`) whose worker has no heartbeat; this worker's own and unlabelled ones are left alone. */
export async function ofDeadWorkers<T>(listed: readonly T[], workerOf: (s: T) => string | undefined, ownLabel: string, owners: OwnerLiveness): Promise<T[]> {
  const others = listed.filter((s) => workerOf(s) !== undefined && workerOf(s) !== ownLabel);
  if (others.length === 0) return [];
  const alive = await owners.liveOwners([...new Set(others.map((s) => workerOf(s)!))]);
  return others.filter((s) => !alive.has(workerOf(s)!));
}

/** Removes each one; how many went (a removal that answers false, or fails, does not count). */
export async function removeEach<T>(doomed: readonly T[], remove: (s: T) => Promise<boolean | void>): Promise<number> {
  let removed = 0;
  for (const s of doomed) {
    try {
      if ((await remove(s)) !== false) removed++;
    } catch {
      // The next pass tries again.
    }
  }
  return removed;
}
