/**
 * How long a retried job waits: exponential from the job's backoff delay
 * (1 s, 2 s, 4 s, ...), or longer when the failure says how long the backend
 * wants us to wait (SANDQ_ERR_PROVIDER_RATE_LIMITED with Retry-After).
 * BullMQ holds the job in its delayed set meanwhile, so no worker slot waits.
 */
import type { MinimalJob } from "bullmq";
import { SandqueueError } from "../errors/index.js";

/** Never wait longer than this on a backend's word alone. */
const MAX_RETRY_AFTER_MS = 15 * 60_000;

export function retryDelayMs(attemptsMade: number, _type?: string, err?: Error, job?: MinimalJob): number {
  const base = job?.opts.backoff && typeof job.opts.backoff === "object" ? (job.opts.backoff.delay ?? 1000) : 1000;
  const exponential = Math.round(2 ** Math.max(0, attemptsMade - 1) * base);
  const asked = err instanceof SandqueueError && err.retryAfterMs !== undefined ? Math.min(err.retryAfterMs, MAX_RETRY_AFTER_MS) : 0;
  return Math.max(exponential, asked);
}
