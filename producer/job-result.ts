/**
 * The result contract: what a worker publishes for every job, exactly once.
 *
 * User code that fails, times out or hits a limit is a result with a status,
 * not an exception. `error` means the runner itself could not run the job.
 */
import { z } from "zod";

export const JOB_STATUSES = ["succeeded", "failed", "timed_out", "killed", "error"] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

/** Why a job was `killed` (a limit other than wall time, or a cancel). */
export const KILL_REASONS = ["memory", "pids", "output", "workspace_limit", "cancelled"] as const;
export type KillReason = (typeof KILL_REASONS)[number];

export const TimingsSchema = z.object({
  queuedMs: z.number(),
  acquireMs: z.number(),
  hydrateMs: z.number().optional(),
  execMs: z.number(),
  snapshotMs: z.number().optional(),
  totalMs: z.number(),
});
export type Timings = z.infer<typeof TimingsSchema>;

export const SnapshotRefSchema = z.object({
  id: z.string(),
  bytes: z.number(),
  files: z.number(),
});
export type SnapshotRef = z.infer<typeof SnapshotRefSchema>;

export const JobResultSchema = z.object({
  id: z.string(),
  status: z.enum(JOB_STATUSES),
  exitCode: z.number().int().nullable(),
  signal: z.string().nullable(),
  stdout: z.string(),
  stderr: z.string(),
  stdoutTruncated: z.boolean(),
  stderrTruncated: z.boolean(),
  reason: z.enum(KILL_REASONS).nullable(),
  timings: TimingsSchema,
  provider: z.string(),
  image: z.string(),
  worker: z.string(),
  attempts: z.number().int(),
  snapshot: SnapshotRefSchema.nullable().optional(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
});
export type JobResult = z.infer<typeof JobResultSchema>;

/** The output fields of a result for a job that produced none. */
export const NO_OUTPUT = {
  exitCode: null,
  signal: null,
  stdout: "",
  stderr: "",
  stdoutTruncated: false,
  stderrTruncated: false,
} as const;

/** An `error` result: the runner could not run the job (worker and producer build them alike). */
export function errorJobResult(f: {
  id: string;
  image: string;
  provider: string;
  worker: string;
  attempts: number;
  totalMs: number;
  error: { code: string; message: string };
}): JobResult {
  return {
    id: f.id,
    status: "error",
    ...NO_OUTPUT,
    reason: null,
    timings: { queuedMs: 0, acquireMs: 0, execMs: 0, totalMs: f.totalMs },
    provider: f.provider,
    image: f.image,
    worker: f.worker,
    attempts: f.attempts,
    snapshot: null,
    error: f.error,
  };
}

/** Exit status the CLI uses for a result (`timeout(1)` conventions). */
export function exitStatusFor(result: JobResult): number {
  switch (result.status) {
    case "succeeded":
      return 0;
    case "failed":
      return result.exitCode ?? 1;
    case "timed_out":
      return 124;
    case "error":
      return 125;
    case "killed":
      return result.exitCode !== null && result.exitCode !== 0 ? result.exitCode : 137;
  }
}
