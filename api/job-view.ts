/**
 * What GET /v1/jobs/{id} answers: `{id, state, result}`, with BullMQ's
 * states folded into the four a caller acts on.
 */
import type { Queue } from "bullmq";
import { ClientError, ErrorCodes } from "../errors/index.js";
import type { SandqueueClient } from "../producer/client.js";
import type { JobResult } from "../producer/job-result.js";

/** queued: waiting to run; running: a worker has it; retrying: waiting out a backoff after an infrastructure fault; finished: `result` is set. */
export const JOB_STATES = ["queued", "running", "retrying", "finished"] as const;
export type JobState = (typeof JOB_STATES)[number];

export interface JobView {
  id: string;
  state: JobState;
  result: JobResult | null;
}

export function stateOf(bullState: string): JobState | null {
  switch (bullState) {
    case "waiting":
    case "prioritized":
    case "waiting-children":
      return "queued";
    case "active":
      return "running";
    case "delayed":
      return "retrying";
    case "completed":
    case "failed":
      return "finished";
    default:
      return null;
  }
}

export function notFound(id: string): ClientError {
  return new ClientError(ErrorCodes.JOB_NOT_FOUND, `no job ${id} (never enqueued with this API key, cancelled, or its result expired)`);
}

export async function readJob(queue: Queue, client: SandqueueClient, id: string): Promise<JobView> {
  const state = stateOf(await queue.getJobState(id));
  if (state === null) throw notFound(id);
  if (state !== "finished") return { id, state, result: null };
  const result = await client.getResult(id);
  return { id, state, result };
}
