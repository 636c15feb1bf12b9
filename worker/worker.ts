/**
 * The worker runtime: takes jobs from the BullMQ queue, runs each through the
 * pipeline (run-job.ts), and returns the JobResult as the job's return value
 * (that is the one publication of the result).
 *
 * Lifecycle: created -> starting -> running -> draining -> closed. Shutdown is
 * two-phase: stop taking jobs and let running ones finish within the grace
 * period; then abort the rest, kill their sandboxes and put the jobs back in
 * the waiting list so another worker runs them. Nothing is lost.
 */
import { EventEmitter } from "node:events";
import { Worker, WaitingError, type Job } from "bullmq";
import type { Redis } from "ioredis";
import { ConfigError, ErrorCodes, SandqueueError, toSandqueueError } from "../errors/index.js";
import { parseJobSpec, type JobSpec } from "../producer/job-spec.js";
import type { JobResult } from "../producer/job-result.js";
import { cancelChannel, type QueuedJobData } from "../producer/queue-protocol.js";
import { createRedis, redactUrl } from "../producer/redis.js";
import type { SandboxProvider } from "../providers/provider.js";
import type { WorkerConfig } from "./config.js";
import { resolveLimits } from "./limits.js";
import { Heartbeat } from "./heartbeat.js";
import { checkCapabilities } from "./capabilities.js";
import { checkEgressLimits } from "./egress/config.js";
import { retryDelayMs } from "./retry-backoff.js";
import { silentLogger, type Logger } from "./log.js";
import {
  ShutdownInterrupt,
  errorResult,
  runJob,
  type EgressOpener,
  type FilesToTar,
  type OutputMasker,
  type SecretResolver,
  type WorkspaceStore,
} from "./run-job.js";

export interface WorkerDeps {
  provider: SandboxProvider;
  secrets?: SecretResolver;
  workspace?: WorkspaceStore;
  filesToTar?: FilesToTar;
  mask?: OutputMasker;
  /** The egress proxy; jobs with a network policy need it. */
  egress?: EgressOpener;
  log?: Logger;
}

export type WorkerState = "created" | "starting" | "running" | "draining" | "closed";

/** What the worker tells observers (metrics, logs, tests). */
export interface WorkerEvents {
  "job:start": [info: { jobId: string; spec: JobSpec; attempt: number }];
  "job:phase": [info: { phase: string; seconds: number; spec: JobSpec }];
  "job:finished": [info: { result: JobResult; spec: JobSpec | null }];
  "job:retry": [info: { jobId: string; error: SandqueueError; attempt: number }];
  "job:requeued": [info: { jobId: string }];
}

interface Running {
  controller: AbortController;
  job: Job<QueuedJobData>;
}

export class SandqueueWorker extends EventEmitter<WorkerEvents> {
  readonly config: WorkerConfig;
  private readonly deps: WorkerDeps;
  private readonly log: Logger;
  private _state: WorkerState = "created";
  private bull: Worker<QueuedJobData, JobResult> | undefined;
  private connection: Redis | undefined;
  private subscriber: Redis | undefined;
  private reapTimer: NodeJS.Timeout | undefined;
  private heartbeat: Heartbeat | undefined;
  private readonly running = new Map<string, Running>();
  /** Sandbox releases still in progress after their job's result was published. */
  private readonly releases = new Set<Promise<void>>();
  private closing: Promise<void> | undefined;

  constructor(config: WorkerConfig, deps: WorkerDeps) {
    super();
    this.config = config;
    this.deps = deps;
    this.log = deps.log ?? silentLogger;
  }

  get state(): WorkerState {
    return this._state;
  }

  /** Sandboxes whose job has a result but whose removal is still running. */
  get releasesPending(): number {
    return this.releases.size;
  }

  /** Jobs currently in the pipeline on this worker. */
  get activeJobs(): number {
    return this.running.size;
  }

  /** The worker's own Redis connection (for readiness checks and queue metrics). */
  get redis(): Redis | undefined {
    return this.connection;
  }

  async start(): Promise<void> {
    if (this._state !== "created") throw new Error(`worker already ${this._state}`);
    this._state = "starting";
    const releasers: (() => Promise<unknown>)[] = [];
    try {
      this.connection = createRedis(this.config.redisUrl, "worker");
      releasers.push(() => this.connection!.quit());
      reportOutages(this.connection, this.config.redisUrl, this.log);
      await assertNoEviction(this.connection, this.config.redisUrl);

      // Beating before the first reap and before any sandbox exists: no other
      // worker's reaper may take this one's sandboxes for a dead worker's.
      this.heartbeat = new Heartbeat(
        this.connection,
        this.config.prefix,
        this.config.workerId,
        this.config.heartbeatTtlMs,
        { queue: this.config.queue, provider: this.deps.provider.name },
        (err) => this.log.log("warn", "worker.heartbeat_failed", { error: err.message }),
      );
      await this.heartbeat.start();
      releasers.push(() => this.heartbeat!.stop());
      await this.reap();
      this.reapTimer = setInterval(() => void this.reap(), this.config.reapIntervalMs).unref();

      this.subscriber = createRedis(this.config.redisUrl, "worker");
      releasers.push(() => this.subscriber!.quit());
      await this.subscriber.subscribe(cancelChannel(this.config.prefix, this.config.queue));
      this.subscriber.on("message", (_channel: string, jobId: string) => this.abortJob(jobId, "cancelled"));

      this.bull = new Worker<QueuedJobData, JobResult>(this.config.queue, (job, token) => this.process(job, token), {
        connection: this.connection,
        prefix: this.config.prefix,
        concurrency: this.config.concurrency,
        lockDuration: this.config.lockDurationMs,
        stalledInterval: this.config.stalledIntervalMs,
        maxStalledCount: this.config.maxStalledCount,
        autorun: false,
        settings: { backoffStrategy: retryDelayMs },
        // Results are kept per the producer's job options.
      });
      this.bull.on("error", (err) => this.log.log("warn", "worker.redis_error", { error: err.message }));
      void this.bull.run().catch((err: unknown) => this.log.log("error", "worker.run_failed", { error: String(err) }));
      await this.bull.waitUntilReady();
      this._state = "running";
      this.log.log("info", "worker.started", {
        worker: this.config.workerId,
        queue: this.config.queue,
        provider: this.deps.provider.name,
        concurrency: this.config.concurrency,
        redis: redactUrl(this.config.redisUrl),
      });
    } catch (err) {
      // Undo what start already took, last first.
      if (this.reapTimer) clearInterval(this.reapTimer);
      for (const release of releasers.reverse()) await release().catch(() => {});
      this._state = "closed";
      throw err;
    }
  }

  /**
   * Stops taking jobs; running jobs get `graceMs` to finish, then their
   * sandboxes are killed and the jobs go back to the queue. Idempotent.
   */
  close(graceMs = this.config.graceMs): Promise<void> {
    this.closing ??= this.doClose(graceMs);
    return this.closing;
  }

  private async doClose(graceMs: number): Promise<void> {
    if (this._state === "created" || this._state === "closed") {
      this._state = "closed";
      return;
    }
    this._state = "draining";
    this.log.log("info", "worker.draining", { running: this.running.size, graceMs });
    const force = setTimeout(() => this.abortRunning(), graceMs);
    const steps: (() => Promise<unknown> | undefined)[] = [
      // Bounded: with Redis down BullMQ's close can wait forever. Jobs still
      // active then keep their place in Redis and come back through the
      // stalled-job check once their lock expires: nothing is lost.
      () => this.bull && bounded(this.bull.close(), graceMs + CLOSE_SLACK_MS, () => this.log.log("warn", "worker.close_timeout", { afterMs: graceMs + CLOSE_SLACK_MS })),
      async () => clearInterval(this.reapTimer),
      // Every sandbox gone before the runtime closes the provider.
      () => Promise.all([...this.releases]),
      // Only now may other workers see this one as gone. (The pool's
      // sandboxes go with the provider's close; a reaper removes them if
      // that never happens.)
      () => this.heartbeat?.stop(),
      () => quitOrDrop(this.subscriber),
      () => quitOrDrop(this.connection),
    ];
    for (const step of steps) {
      try {
        await step();
      } catch (err) {
        this.log.log("warn", "worker.close_step_failed", { error: String(err) });
      }
    }
    clearTimeout(force);
    this._state = "closed";
    this.log.log("info", "worker.closed", {});
  }

  /** Ends the grace period now: running jobs are stopped and returned to the queue. */
  abortRunning(): void {
    for (const id of this.running.keys()) this.abortJob(id, "shutdown");
  }

  /** Aborts a running job on this worker, if it runs here. */
  private abortJob(jobId: string, reason: "cancelled" | "shutdown"): void {
    const r = this.running.get(jobId);
    if (r && !r.controller.signal.aborted) r.controller.abort(reason);
  }

  private async reap(): Promise<void> {
    try {
      const n = (await this.deps.provider.reap?.(this.heartbeat)) ?? 0;
      if (n) this.log.log("info", "worker.reaped", { sandboxes: n });
    } catch (err) {
      this.log.log("error", "worker.reap_failed", { error: String(err) });
    }
  }

  private async process(job: Job<QueuedJobData>, token: string | undefined): Promise<JobResult> {
    const jobId = job.id as string;
    const attempt = job.attemptsMade + 1;
    const controller = new AbortController();
    this.running.set(jobId, { controller, job });
    const base = { jobId, attempt, enqueuedAt: job.timestamp, workerId: this.config.workerId, provider: this.deps.provider.name };
    let spec: JobSpec | null = null;
    let result: JobResult;
    try {
      spec = parseJobSpec(job.data?.spec);
      const parsedSpec = spec;
      checkCapabilities(spec, this.deps.provider.capabilities, this.deps.provider.name);
      checkEgressLimits(spec.network, this.config.egress);
      this.emit("job:start", { jobId, spec, attempt });
      result = await runJob(spec, {
        ...base,
        provider: this.deps.provider,
        limits: resolveLimits(spec.limits, this.config.defaultLimits, this.config.maxLimits),
        workspaceLimits: this.config.workspaceLimits,
        signal: controller.signal,
        secrets: this.deps.secrets,
        workspace: this.deps.workspace,
        filesToTar: this.deps.filesToTar,
        mask: this.deps.mask,
        egress: this.deps.egress,
        releaseInBackground: (released) => {
          this.releases.add(released);
          void released.finally(() => this.releases.delete(released));
        },
        // Remains on the host (a workspace holds memory) until a reap removes them: an operator must see it.
        onReleaseFailed: (err) => {
          this.log.log("error", "worker.release_failed", { job: jobId, error: String(err) });
        },
        onPhase: (phase, ms) => this.emit("job:phase", { phase, seconds: ms / 1000, spec: parsedSpec }),
      });
    } catch (err) {
      if (err instanceof ShutdownInterrupt) {
        // Back to waiting without counting an attempt; another worker takes it.
        await job.moveToWait(token);
        this.emit("job:requeued", { jobId });
        this.log.log("info", "job.requeued", { job: jobId });
        throw new WaitingError();
      }
      const error = toSandqueueError(err);
      if (error.retryable && attempt < (job.opts.attempts ?? 1)) {
        this.emit("job:retry", { jobId, error, attempt });
        this.log.log("warn", "job.retry", { job: jobId, attempt, code: error.code, error: error.message });
        throw error;
      }
      // Job data from Redis may hold anything (an image of {"toString": 1} makes String() throw): only a string is echoed.
      const rawImage: unknown = (job.data as { spec?: { image?: unknown } } | null | undefined)?.spec?.image;
      const fallbackSpec = spec ?? ({ image: typeof rawImage === "string" ? rawImage : "" } as JobSpec);
      result = errorResult(fallbackSpec, error, base);
    } finally {
      this.running.delete(jobId);
    }
    this.emit("job:finished", { result, spec });
    if (this.config.logJobs) this.log.log("info", "job.finished", auditFields(result, spec));
    return result;
  }
}

/** How long shutdown waits past the grace period for BullMQ to let go. */
const CLOSE_SLACK_MS = 5000;

async function bounded(p: Promise<unknown>, ms: number, onTimeout: () => void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), ms)));
  const outcome = await Promise.race([p.then(() => "done" as const, () => "done" as const), timedOut]);
  clearTimeout(timer);
  if (outcome === "timeout") onTimeout();
}

/** QUIT within a second when possible; a Redis that is down must not hold shutdown. */
async function quitOrDrop(client: Redis | undefined): Promise<void> {
  if (!client) return;
  if (client.status === "ready") {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([client.quit().catch(() => {}), new Promise((r) => (timer = setTimeout(r, 1000)))]);
    clearTimeout(timer);
  }
  client.disconnect();
}

/** The audit line: who, what image, which secret names, limits, outcome. Never values. */
function auditFields(result: JobResult, spec: JobSpec | null): Record<string, unknown> {
  return {
    job: result.id,
    kind: spec?.kind,
    image: result.image,
    provider: result.provider,
    submittedBy: spec?.submittedBy ?? null,
    secrets: spec?.secrets ?? [],
    limits: spec?.limits ?? {},
    labels: spec?.labels ?? {},
    status: result.status,
    reason: result.reason,
    exitCode: result.exitCode,
    error: result.error?.code ?? null,
    attempts: result.attempts,
    timings: result.timings,
  };
}

/** How often a worker that cannot reach Redis says so: it waits and retries forever. */
const OUTAGE_LOG_INTERVAL_MS = 10_000;

/**
 * A worker connection retries forever, so a worker started while Redis is
 * down (or running through an outage) would otherwise wait in silence: it
 * logs the outage at once, then every OUTAGE_LOG_INTERVAL_MS, and the
 * reconnection.
 */
function reportOutages(redis: Redis, url: string, log: Logger): void {
  let since: number | null = null;
  let lastLogged = 0;
  redis.on("error", (err: Error) => {
    const now = Date.now();
    since ??= now;
    if (now - lastLogged < OUTAGE_LOG_INTERVAL_MS) return;
    lastLogged = now;
    log.log("warn", "worker.redis_unavailable", { redis: redactUrl(url), error: err.message, forMs: now - since });
  });
  redis.on("ready", () => {
    if (since === null) return;
    log.log("info", "worker.redis_reconnected", { redis: redactUrl(url), afterMs: Date.now() - since });
    since = null;
    lastLogged = 0;
  });
}

/**
 * BullMQ needs Redis to keep every key: with an evicting policy, jobs (and
 * their locks) can vanish silently. Read through INFO, which managed Redis
 * services allow even where CONFIG is disabled.
 */
export async function assertNoEviction(redis: Redis, url: string): Promise<void> {
  const info = await redis.info("memory");
  const policy = /maxmemory_policy:(\S+)/.exec(info)?.[1];
  if (policy && policy !== "noeviction") {
    throw new ConfigError(
      ErrorCodes.REDIS_POLICY,
      `Redis at ${redactUrl(url)} has maxmemory-policy=${policy}; sandqueue needs noeviction (run: redis-cli CONFIG SET maxmemory-policy noeviction, and set it in redis.conf)`,
    );
  }
}
