/**
 * The producer client a service uses: enqueue, enqueueMany, waitForResult,
 * getResult, cancel.
 *
 * Every spec is validated before anything is enqueued. Results live in the
 * BullMQ job's return value; a job's result is published exactly once by the
 * worker that held its lock when it finished.
 */
import { createHash, randomUUID } from "node:crypto";
import { Job, Queue, QueueEvents } from "bullmq";
import type { Redis } from "ioredis";
import { ClientError, ConfigError, ErrorCodes, SpecError, isSandqueueError, withTimeout } from "../errors/index.js";
import { DEFAULT_SPEC_SIZE_LIMITS, idempotencyConflicts, parseJobSpec, type JobSpec, type SpecSizeLimits } from "./job-spec.js";
import { JobResultSchema, errorJobResult, type JobResult } from "./job-result.js";
import {
  DEFAULT_PREFIX,
  DEFAULT_QUEUE,
  DEFAULT_REDIS_URL,
  connectOrFail,
  createRedis,
  isConnectionError,
  queueNameProblem,
  redisUnavailable,
} from "./redis.js";
import { RETRY_BACKOFF, cancelChannel, type QueuedJobData } from "./queue-protocol.js";

export interface ClientOptions {
  redisUrl?: string;
  queue?: string;
  prefix?: string;
  /** Tries per job for infrastructure faults (user failures are never retried). */
  attempts?: number;
  /** First retry delay; doubles per attempt. */
  backoffMs?: number;
  /** Finished jobs (and their results) are kept this long... */
  resultTtlMs?: number;
  /** ...and at most this many of them. */
  maxResults?: number;
  sizeLimits?: SpecSizeLimits;
  /** How long a call may wait for a Redis that does not answer. */
  connectTimeoutMs?: number;
  /** How long one command may wait for its reply once connected (default 30 s). */
  commandTimeoutMs?: number;
}

export interface EnqueuedJob {
  id: string;
}

const DEFAULTS = {
  attempts: 3,
  backoffMs: 1000,
  resultTtlMs: 24 * 3600 * 1000,
  maxResults: 100_000,
  connectTimeoutMs: 2000,
};

/** BullMQ options of every sandqueue job (the HTTP API enqueues with the same). */
export function queuedJobOptions(o: { attempts: number; backoffMs: number; resultTtlMs: number; maxResults: number } = DEFAULTS) {
  return {
    attempts: o.attempts,
    // Exponential, but a backend's Retry-After can stretch it (the worker's backoffStrategy).
    backoff: { type: RETRY_BACKOFF, delay: o.backoffMs },
    removeOnComplete: { age: Math.ceil(o.resultTtlMs / 1000), count: o.maxResults },
    removeOnFail: { age: Math.ceil(o.resultTtlMs / 1000), count: o.maxResults },
  };
}

/**
 * Webhooks are signed with an API key's secret and delivered by `sandqueue
 * api`; a spec enqueued here would carry its callbackUrl unheeded.
 */
function refuseCallback(spec: JobSpec): JobSpec {
  if (spec.callbackUrl === undefined) return spec;
  throw new SpecError(ErrorCodes.SPEC_INVALID, "invalid job spec: callbackUrl: webhooks are delivered by the HTTP API (sandqueue api); the Node client cannot deliver one", {
    details: { issues: [{ path: "callbackUrl", message: "webhooks are delivered by the HTTP API (sandqueue api)" }] },
  });
}

/** Job id for a spec: stable for an idempotency key, random otherwise. */
export function jobIdFor(spec: JobSpec): string {
  if (spec.idempotencyKey === undefined) return randomUUID();
  return `idem-${createHash("sha256").update(spec.idempotencyKey).digest("hex").slice(0, 40)}`;
}

type Waiter = { resolve: (r: JobResult) => void; reject: (e: Error) => void };

export class SandqueueClient {
  readonly queueName: string;
  private readonly url: string;
  private readonly opts: typeof DEFAULTS & { sizeLimits: SpecSizeLimits; prefix: string };
  private readonly redis: Redis;
  private queueInstance: Queue | undefined;
  private events: QueueEvents | undefined;
  private eventsRedis: Redis | undefined;
  private eventsReady: Promise<void> | undefined;
  private readonly waiters = new Map<string, Set<Waiter>>();
  private closed = false;

  constructor(options: ClientOptions = {}) {
    this.url = options.redisUrl ?? DEFAULT_REDIS_URL;
    this.queueName = options.queue ?? DEFAULT_QUEUE;
    const problem = queueNameProblem(this.queueName);
    if (problem) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `queue ${JSON.stringify(this.queueName)}: ${problem}`);
    this.opts = {
      attempts: options.attempts ?? DEFAULTS.attempts,
      backoffMs: options.backoffMs ?? DEFAULTS.backoffMs,
      resultTtlMs: options.resultTtlMs ?? DEFAULTS.resultTtlMs,
      maxResults: options.maxResults ?? DEFAULTS.maxResults,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
      sizeLimits: options.sizeLimits ?? DEFAULT_SPEC_SIZE_LIMITS,
      prefix: options.prefix ?? DEFAULT_PREFIX,
    };
    this.redis = createRedis(this.url, "producer", options.commandTimeoutMs);
  }

  /**
   * The BullMQ queue, created once the connection is up: BullMQ probes the
   * server as soon as a Queue exists, and a fail-fast connection would turn
   * that probe into a permanent error.
   */
  private get queue(): Queue {
    if (!this.queueInstance) {
      this.queueInstance = new Queue(this.queueName, { connection: this.redis, prefix: this.opts.prefix });
      this.queueInstance.on("error", () => {});
    }
    return this.queueInstance;
  }

  /** Validates and enqueues one job. Nothing is enqueued when the spec is invalid. */
  async enqueue(input: unknown): Promise<EnqueuedJob> {
    const spec = refuseCallback(parseJobSpec(input, this.opts.sizeLimits));
    return this.call(async () => {
      const id = jobIdFor(spec);
      await this.queue.add(spec.kind, this.dataFor(spec), { ...this.jobOptions(), jobId: id });
      return { id };
    });
  }

  /**
   * Validates every spec first, then enqueues all in one round trip
   * (BullMQ addBulk). One invalid spec means nothing is enqueued.
   */
  async enqueueMany(inputs: unknown[]): Promise<EnqueuedJob[]> {
    const specs: JobSpec[] = [];
    const problems: string[] = [];
    inputs.forEach((input, i) => {
      try {
        specs.push(refuseCallback(parseJobSpec(input, this.opts.sizeLimits)));
      } catch (err) {
        if (!isSandqueueError(err)) throw err;
        problems.push(`[${i}] ${err.message}`);
      }
    });
    // Indices agree with inputs only when every spec parsed.
    if (!problems.length) {
      for (const c of idempotencyConflicts(specs)) {
        problems.push(
          `[${c.index}] idempotencyKey ${JSON.stringify(c.key)} is also used by [${c.first}] with a different spec (one key is one job: [${c.index}] would get [${c.first}]'s result)`,
        );
      }
    }
    if (problems.length) {
      throw new SpecError(ErrorCodes.SPEC_INVALID, `${problems.length} of ${inputs.length} job specs are invalid; nothing was enqueued:\n${problems.join("\n")}`, {
        details: { invalid: problems.length },
      });
    }
    return this.call(async () => {
      const jobs = specs.map((spec) => ({
        name: spec.kind,
        data: this.dataFor(spec),
        opts: { ...this.jobOptions(), jobId: jobIdFor(spec) },
      }));
      const added = await this.queue.addBulk(jobs);
      return added.map((j) => ({ id: j.id as string }));
    });
  }

  /** The result of a finished job, or null while it is waiting or running. */
  async getResult(id: string): Promise<JobResult | null> {
    return this.call(async () => {
      const job = await Job.fromId(this.queue, id);
      if (!job) throw this.notFound(id);
      return resultOf(job);
    });
  }

  private notFound(id: string): ClientError {
    return new ClientError(ErrorCodes.JOB_NOT_FOUND, `no job ${id} in queue ${this.queueName} (never enqueued, cancelled, or its result expired)`);
  }

  /**
   * Whether a job has finished, from two fields of its hash (BullMQ's
   * `timestamp`, set when it is added, and `finishedOn`): a cheap check that
   * transfers nothing of the spec, which may hold megabytes of inline files.
   */
  private async finishedYet(id: string): Promise<boolean> {
    return this.call(async () => {
      const [finishedOn, timestamp] = await this.redis.hmget(this.queue.toKey(id), "finishedOn", "timestamp");
      if (timestamp === null) throw this.notFound(id);
      return finishedOn !== null;
    });
  }

  /**
   * Waits until the job has a result. Rejects with RESULT_TIMEOUT after
   * `timeoutMs`, JOB_NOT_FOUND if the job does not exist, JOB_CANCELLED if it
   * is removed while waiting.
   */
  async waitForResult(id: string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<JobResult> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    await this.ensureEvents();
    return new Promise<JobResult>((resolve, reject) => {
      let set = this.waiters.get(id);
      if (!set) this.waiters.set(id, (set = new Set()));
      const waiter: Waiter = {
        resolve: (r) => {
          finish();
          resolve(r);
        },
        reject: (e) => {
          finish();
          reject(e);
        },
      };
      const timer = setTimeout(
        () => waiter.reject(new ClientError(ErrorCodes.RESULT_TIMEOUT, `no result for job ${id} within ${timeoutMs} ms`, { retryable: true })),
        timeoutMs,
      );
      const onAbort = (): void => waiter.reject(new ClientError(ErrorCodes.RESULT_TIMEOUT, `stopped waiting for job ${id}`));
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      const finish = (): void => {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        const s = this.waiters.get(id);
        s?.delete(waiter);
        if (s && s.size === 0) this.waiters.delete(id);
      };
      set.add(waiter);
      // Subscribed first, then look: a job that finished before we subscribed is
      // seen here. Only a finished job is read in full (its spec and result).
      this.finishedYet(id)
        .then((finished) => (finished ? this.getResult(id) : null))
        .then(
          (r) => {
            if (r) waiter.resolve(r);
          },
          (err: unknown) => waiter.reject(err as Error),
        );
    });
  }

  /**
   * Cancels a job. A waiting job is removed; a running one is stopped by its
   * worker and ends as `killed` with reason `cancelled`. Returns false when the
   * job had already finished.
   */
  async cancel(id: string): Promise<boolean> {
    return this.call(async () => {
      const job = await Job.fromId(this.queue, id);
      if (!job) throw new ClientError(ErrorCodes.JOB_NOT_FOUND, `no job ${id} in queue ${this.queueName}`);
      const state = await job.getState();
      if (state === "completed" || state === "failed") return false;
      if (state === "active") {
        await this.redis.publish(cancelChannel(this.opts.prefix, this.queueName), id);
        return true;
      }
      try {
        await job.remove();
        this.rejectWaiters(id, new ClientError(ErrorCodes.JOB_CANCELLED, `job ${id} was cancelled before it ran`));
        return true;
      } catch {
        // It became active between the two calls: stop it where it runs.
        await this.redis.publish(cancelChannel(this.opts.prefix, this.queueName), id);
        return true;
      }
    });
  }

  /** Counts per BullMQ state, for progress displays. */
  async counts(): Promise<Record<string, number>> {
    return this.call(() => this.queue.getJobCounts("waiting", "active", "delayed", "completed", "failed", "prioritized"));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const [id] of this.waiters) this.rejectWaiters(id, new ClientError(ErrorCodes.RESULT_TIMEOUT, "client closed"));
    // Each step is bounded: closing must not hang on a Redis that is down.
    const steps = [
      () => this.events?.close(),
      () => this.queueInstance?.close(),
      () => closeRedis(this.eventsRedis),
      () => closeRedis(this.redis),
    ];
    for (const step of steps) {
      try {
        await withTimeout(Promise.resolve(step()), 1000, () => new Error("close timed out"));
      } catch {
        // keep closing the rest
      }
    }
    this.eventsRedis?.disconnect();
    this.redis.disconnect();
  }

  private dataFor(spec: JobSpec): QueuedJobData {
    return { v: 1, spec };
  }

  private jobOptions() {
    return queuedJobOptions(this.opts);
  }

  private rejectWaiters(id: string, err: Error): void {
    for (const w of [...(this.waiters.get(id) ?? [])]) w.reject(err);
  }

  private resolveFromJob(id: string): void {
    if (!this.waiters.has(id)) return;
    this.getResult(id).then(
      (r) => {
        if (r) for (const w of [...(this.waiters.get(id) ?? [])]) w.resolve(r);
      },
      () => {},
    );
  }

  /** One QueueEvents stream reader serves every waiter of this client. */
  private ensureEvents(): Promise<void> {
    if (!this.eventsReady) {
      this.eventsReady = (async () => {
        await connectOrFail(this.redis, this.url, this.opts.connectTimeoutMs);
        // Read the event stream from the server's "now", not from whenever the
        // first blocking read happens to be issued ('$'): a job finishing in
        // between would otherwise never be seen.
        const [sec, usec] = await this.redis.time();
        const events = this.startEvents(`${Number(sec) * 1000 + Math.floor(Number(usec) / 1000) - 1}-0`);
        await withTimeout(events.waitUntilReady(), this.opts.connectTimeoutMs, () => redisUnavailable(this.url, "event stream not ready"));
      })();
      this.eventsReady.catch(() => {
        this.eventsReady = undefined;
      });
    }
    return this.eventsReady;
  }

  private startEvents(lastEventId: string): QueueEvents {
    if (!this.events) {
      this.eventsRedis = createRedis(this.url, "worker");
      const events = new QueueEvents(this.queueName, { connection: this.eventsRedis, prefix: this.opts.prefix, lastEventId });
      this.events = events;
      events.on("error", () => {});
      events.on("completed", ({ jobId, returnvalue }) => {
        if (!this.waiters.has(jobId)) return;
        const parsed = JobResultSchema.safeParse(typeof returnvalue === "string" ? safeJson(returnvalue) : returnvalue);
        if (parsed.success) for (const w of [...(this.waiters.get(jobId) ?? [])]) w.resolve(parsed.data);
        else this.resolveFromJob(jobId);
      });
      // 'failed' fires only when BullMQ gives up (worker lost too often): read the final state.
      events.on("failed", ({ jobId }) => this.resolveFromJob(jobId));
      events.on("removed", ({ jobId }) =>
        this.rejectWaiters(jobId, new ClientError(ErrorCodes.JOB_CANCELLED, `job ${jobId} was removed before it finished`)),
      );
    }
    return this.events;
  }

  /** Runs a Redis call, turning "Redis is down" into a fast, clear error. */
  private async call<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new ClientError(ErrorCodes.REDIS_UNAVAILABLE, "client is closed");
    await connectOrFail(this.redis, this.url, this.opts.connectTimeoutMs);
    try {
      return await fn();
    } catch (err) {
      if (isSandqueueError(err)) throw err;
      if (isConnectionError(err, this.redis)) throw redisUnavailable(this.url, err);
      throw err;
    }
  }
}

/** The published result of a job, or a synthesized `error` result when BullMQ gave up on it. */
function resultOf(job: Job): JobResult | null {
  if (job.finishedOn === undefined || job.finishedOn === null) return null;
  if (job.returnvalue !== null && job.returnvalue !== undefined) {
    const parsed = JobResultSchema.safeParse(typeof job.returnvalue === "string" ? safeJson(job.returnvalue) : job.returnvalue);
    if (parsed.success) return parsed.data;
  }
  if (!job.failedReason) return null;
  // No worker published a result: every attempt lost its worker (crash, kill -9).
  const spec = (job.data as QueuedJobData | null | undefined)?.spec; // job data may hold anything
  return errorJobResult({
    id: job.id as string,
    image: typeof spec?.image === "string" ? spec.image : "",
    provider: "",
    worker: "",
    attempts: job.attemptsMade,
    totalMs: job.finishedOn - job.timestamp,
    error: { code: ErrorCodes.WORKER_LOST, message: `no worker finished the job: ${job.failedReason}` },
  });
}

/** QUIT when connected (flushes pending replies); otherwise just drop the socket. */
async function closeRedis(client: Redis | undefined): Promise<void> {
  if (!client) return;
  if (client.status === "ready") await client.quit();
  else client.disconnect();
}

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}
