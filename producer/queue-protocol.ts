/**
 * What producer and worker agree on beyond the spec and result schemas:
 * the job data envelope and the cancel channel.
 */
import type { JobSpec } from "./job-spec.js";

/** BullMQ job data. `v` lets a future worker read older envelopes. */
/**
 * The jobs' backoff type: exponential from `delay`, or longer when the
 * failure carried a backend's Retry-After. BullMQ calls the worker's
 * `settings.backoffStrategy` for a type it does not know, which is how the
 * worker sees the error; see worker/retry-backoff.ts.
 */
export const RETRY_BACKOFF = "sandqueue-retry";

export interface QueuedJobData {
  v: 1;
  spec: JobSpec;
}

/** Pub/sub channel on which producers ask workers to stop a running job. */
export function cancelChannel(prefix: string, queue: string): string {
  return `${prefix}:${queue}:cancel`;
}
