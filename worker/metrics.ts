/**
 * Prometheus metrics for one worker, on an injected prom-client Registry.
 *
 * Everything job-related comes from the worker's events (job:start, job:phase,
 * job:finished, job:retry, job:requeued); the pipeline knows nothing about
 * metrics. Labels come only from small fixed sets (queue, kind, provider,
 * status, phase, state, operation, reason, code), plus `image` on the pool
 * gauge (the few images a provider's pool keeps): never a job or sandbox id.
 *
 * Queue gauges (backlog by state, oldest waiting job) are read from Redis at
 * scrape time, bounded by a short timeout and served from the last good read
 * otherwise, so a scrape never waits on (or piles commands onto) a Redis that
 * is down. Every worker of a queue reports the same queue gauges: aggregate
 * them with max(), not sum().
 */
import type { EventEmitter } from "node:events";
import { Queue } from "bullmq";
import type { Redis } from "ioredis";
import { Counter, Gauge, Histogram, collectDefaultMetrics, type Registry } from "prom-client";
import { ErrorCodes, withTimeout } from "../errors/index.js";
import type { JobSpec } from "../producer/job-spec.js";
import { JOB_STATUSES, KILL_REASONS, type JobResult } from "../producer/job-result.js";
import type { WorkerConfig } from "./config.js";
import type { WorkerEvents } from "./worker.js";
import { EGRESS_DECISIONS, type EgressEvent } from "./egress/proxy.js";

/** Phases the pipeline reports, plus `total` (enqueue to result). */
export const PHASES = ["queued", "acquire", "hydrate", "exec", "snapshot", "total"] as const;
/** Queue states exported by `sandqueue_queue_jobs`. */
export const QUEUE_STATES = ["waiting", "active", "delayed", "failed", "completed"] as const;
export type QueueState = (typeof QUEUE_STATES)[number];
/** Where a provider error happened: the pipeline step that was running, or the readiness check. */
export const PROVIDER_OPERATIONS = ["acquire", "hydrate", "exec", "snapshot", "check", "other"] as const;
export type ProviderOperation = (typeof PROVIDER_OPERATIONS)[number];

const KINDS = new Set(["shell", "python"]);
const KNOWN_CODES = new Set<string>(Object.values(ErrorCodes));
/** Error codes that mean the sandbox backend (not the job or the runner) failed. */
const PROVIDER_CODE = /^SANDQ_ERR_(PROVIDER|IMAGE|CGROUP|SANDBOX)_/;
/** From a few ms (acquire) to ten minutes (the maximum job timeout). */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

export interface QueueStats {
  counts: Record<QueueState, number>;
  /** Enqueue time (epoch ms) of the job that has waited longest, or null when none waits. */
  oldestWaitingAt: number | null;
}

/** Reads queue stats from Redis; must reject (not hang) when Redis is unreachable. */
export interface QueueStatsReader {
  read(): Promise<QueueStats>;
  close(): Promise<void>;
}

/** What the metrics need of a worker (a SandqueueWorker, or a stand-in in tests). */
export interface MetricsWorker extends Pick<EventEmitter<WorkerEvents>, "on" | "off"> {
  readonly activeJobs: number;
  readonly config: WorkerConfig;
  readonly redis: Redis | undefined;
}

export interface WorkerMetricsOptions {
  registry: Registry;
  worker: MetricsWorker;
  /** Provider name (the `provider` label). */
  provider: string;
  /** Defaults to a BullMQ reader on the worker's own Redis connection. */
  queueStats?: QueueStatsReader;
  /** How long a scrape waits for Redis before serving the last good read. */
  queueStatsTimeoutMs?: number;
  /** Reads younger than this are reused (several Prometheus servers may scrape). */
  queueStatsMaxAgeMs?: number;
  /** Process and Node.js runtime metrics (default true). */
  defaultMetrics?: boolean;
  /** The provider's ready pooled sandboxes per image (SandboxProvider.readySandboxes). */
  readySandboxes?: () => Record<string, number>;
  /** The worker's egress proxy: one count per request through it (worker/egress/gateway.ts). */
  egress?: Pick<EventEmitter<{ request: [EgressEvent] }>, "on" | "off">;
}

interface JobTrack {
  kind: string;
  /** The sandbox is held from the end of `acquire` until the job leaves the pipeline. */
  acquired: boolean;
  /** Last phase that completed (or failed): where a provider error happened. */
  lastPhase: string | null;
}

export class WorkerMetrics {
  readonly registry: Registry;
  private readonly worker: MetricsWorker;
  private readonly queue: string;
  private readonly provider: string;
  private readonly reader: QueueStatsReader;
  private readonly timeoutMs: number;
  private readonly maxAgeMs: number;
  private readonly jobs = new Map<string, JobTrack>();
  private readonly bySpec = new WeakMap<JobSpec, JobTrack>();
  private stats: QueueStats | null = null;
  private statsUp = 0;
  private lastReadAt = 0;
  private inflight: Promise<void> | undefined;
  private closed = false;

  private readonly finished: Counter<"queue" | "kind" | "provider" | "status">;
  private readonly killed: Counter<"queue" | "kind" | "provider" | "reason">;
  private readonly jobErrors: Counter<"queue" | "provider" | "code">;
  private readonly phaseSeconds: Histogram<"queue" | "kind" | "provider" | "phase">;
  private readonly snapshotBytes: Counter<"queue">;
  private readonly snapshots: Counter<"queue">;
  private readonly providerErrors: Counter<"provider" | "operation">;
  private readonly retries: Counter<"queue" | "kind">;
  private readonly requeued: Counter<"queue">;
  private readonly egressRequests: Counter<"queue" | "decision">;
  private readonly egressBytes: Counter<"queue" | "direction">;
  private readonly egress: WorkerMetricsOptions["egress"];
  private readonly onEgress = (e: EgressEvent): void => {
    this.egressRequests.inc({ queue: this.queue, decision: e.decision });
    if (e.bytesOut) this.egressBytes.inc({ queue: this.queue, direction: "out" }, e.bytesOut);
    if (e.bytesIn) this.egressBytes.inc({ queue: this.queue, direction: "in" }, e.bytesIn);
  };

  private readonly listeners: { [K in keyof WorkerEvents]: (...args: WorkerEvents[K]) => void };

  constructor(opts: WorkerMetricsOptions) {
    this.registry = opts.registry;
    this.worker = opts.worker;
    this.queue = opts.worker.config.queue;
    this.provider = opts.provider;
    this.reader = opts.queueStats ?? bullQueueStatsReader(() => opts.worker.redis, opts.worker.config.queue, opts.worker.config.prefix);
    this.timeoutMs = opts.queueStatsTimeoutMs ?? 250;
    this.maxAgeMs = opts.queueStatsMaxAgeMs ?? 1000;
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });

    const registers = [this.registry];
    this.finished = new Counter({
      name: "sandqueue_jobs_finished_total",
      help: "Jobs that ended with a result, by status (succeeded, failed, timed_out, killed, error).",
      labelNames: ["queue", "kind", "provider", "status"],
      registers,
    });
    this.killed = new Counter({
      name: "sandqueue_jobs_killed_total",
      help: "Jobs with status killed, by the limit that ended them (memory, pids, output, workspace_limit, cancelled).",
      labelNames: ["queue", "kind", "provider", "reason"],
      registers,
    });
    this.jobErrors = new Counter({
      name: "sandqueue_job_errors_total",
      help: "Jobs with status error (the runner could not run them), by error code.",
      labelNames: ["queue", "provider", "code"],
      registers,
    });
    this.phaseSeconds = new Histogram({
      name: "sandqueue_job_phase_duration_seconds",
      help: "Time spent per pipeline phase: queued (enqueue to start), acquire, hydrate, exec, snapshot, total (enqueue to result).",
      labelNames: ["queue", "kind", "provider", "phase"],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.snapshotBytes = new Counter({
      name: "sandqueue_snapshot_bytes_total",
      help: "Bytes of workspace snapshots persisted.",
      labelNames: ["queue"],
      registers,
    });
    this.snapshots = new Counter({
      name: "sandqueue_snapshots_total",
      help: "Workspace snapshots persisted.",
      labelNames: ["queue"],
      registers,
    });
    this.providerErrors = new Counter({
      name: "sandqueue_provider_errors_total",
      help: "Sandbox backend failures (provider, image, cgroup error codes), by the operation that failed.",
      labelNames: ["provider", "operation"],
      registers,
    });
    this.retries = new Counter({
      name: "sandqueue_job_retries_total",
      help: "Attempts that failed on an infrastructure fault and were scheduled for a retry.",
      labelNames: ["queue", "kind"],
      registers,
    });
    this.requeued = new Counter({
      name: "sandqueue_jobs_requeued_total",
      help: "Jobs interrupted by this worker's shutdown and put back in the queue for another worker.",
      labelNames: ["queue"],
      registers,
    });

    this.egressRequests = new Counter({
      name: "sandqueue_egress_requests_total",
      help: "Requests (and CONNECT tunnels) of jobs through the egress proxy, by decision: allowed, denied, rate_limited, address_refused, byte_cap, failed.",
      labelNames: ["queue", "decision"],
      registers,
    });
    this.egressBytes = new Counter({
      name: "sandqueue_egress_bytes_total",
      help: "Bytes through the egress proxy (bodies and tunnelled bytes), by direction: out (sandbox to upstream), in.",
      labelNames: ["queue", "direction"],
      registers,
    });
    this.egress = opts.egress;

    const self = this;
    new Gauge({
      name: "sandqueue_worker_concurrency",
      help: "Jobs this worker runs at once at most.",
      labelNames: ["queue"],
      registers,
      collect() {
        this.set({ queue: self.queue }, self.worker.config.concurrency);
      },
    });
    const ready = opts.readySandboxes;
    new Gauge({
      name: "sandqueue_sandboxes_ready",
      help: "Sandboxes created ahead of demand and waiting for a job (the provider's pool), per image.",
      labelNames: ["provider", "image"],
      registers,
      collect() {
        this.reset();
        for (const [image, n] of Object.entries(ready?.() ?? {})) this.set({ provider: self.provider, image }, n);
      },
    });
    new Gauge({
      name: "sandqueue_worker_jobs_active",
      help: "Jobs in this worker's pipeline now (saturation: divide by sandqueue_worker_concurrency).",
      labelNames: ["queue"],
      registers,
      collect() {
        this.set({ queue: self.queue }, self.worker.activeJobs);
      },
    });
    new Gauge({
      name: "sandqueue_sandboxes_in_use",
      help: "Sandboxes this worker holds now (acquired and not yet released).",
      labelNames: ["queue", "provider"],
      registers,
      collect() {
        this.set({ queue: self.queue, provider: self.provider }, self.sandboxesInUse());
      },
    });
    new Gauge({
      name: "sandqueue_queue_jobs",
      help: "Jobs in the queue by state, read from Redis at scrape time (completed/failed: results still retained).",
      labelNames: ["queue", "state"],
      registers,
      async collect() {
        await self.refreshQueueStats();
        if (!self.stats) return;
        for (const state of QUEUE_STATES) this.set({ queue: self.queue, state }, self.stats.counts[state]);
      },
    });
    new Gauge({
      name: "sandqueue_queue_oldest_waiting_age_seconds",
      help: "How long the longest-waiting job has been in the queue since it was enqueued (0 when none waits).",
      labelNames: ["queue"],
      registers,
      async collect() {
        await self.refreshQueueStats();
        if (!self.stats) return;
        const at = self.stats.oldestWaitingAt;
        this.set({ queue: self.queue }, at === null ? 0 : Math.max(0, (Date.now() - at) / 1000));
      },
    });
    new Gauge({
      name: "sandqueue_redis_up",
      help: "1 when the last queue-stats read from Redis succeeded within its timeout, else 0.",
      labelNames: ["queue"],
      registers,
      async collect() {
        await self.refreshQueueStats();
        this.set({ queue: self.queue }, self.statsUp);
      },
    });

    this.listeners = {
      "job:start": ({ jobId, spec }) => {
        const track: JobTrack = { kind: kindOf(spec), acquired: false, lastPhase: null };
        this.jobs.set(jobId, track);
        this.bySpec.set(spec, track);
      },
      "job:phase": ({ phase, seconds, spec }) => {
        const track = this.bySpec.get(spec);
        if (track) {
          track.lastPhase = phase;
          if (phase === "acquire") track.acquired = true;
        }
        if (!(PHASES as readonly string[]).includes(phase)) return;
        this.phaseSeconds.observe({ queue: this.queue, kind: kindOf(spec), provider: this.provider, phase }, seconds);
      },
      "job:finished": ({ result, spec }) => this.onFinished(result, spec),
      "job:retry": ({ jobId, error }) => {
        const track = this.jobs.get(jobId);
        this.jobs.delete(jobId);
        this.retries.inc({ queue: this.queue, kind: track?.kind ?? "unknown" });
        if (PROVIDER_CODE.test(error.code)) this.recordProviderError(operationOf(track));
      },
      "job:requeued": ({ jobId }) => {
        this.jobs.delete(jobId);
        this.requeued.inc({ queue: this.queue });
      },
    };
    this.subscribe("on");

    // Series exist at 0 from the first scrape: Prometheus cannot see the
    // first increment of a series that appears already at 1, so rate() and
    // increase() would miss it (and ratios would be 0/0).
    for (const kind of KINDS) {
      const base = { queue: this.queue, kind, provider: this.provider };
      for (const status of JOB_STATUSES) this.finished.inc({ ...base, status }, 0);
      for (const reason of KILL_REASONS) this.killed.inc({ ...base, reason }, 0);
      for (const phase of PHASES) this.phaseSeconds.zero({ ...base, phase });
    }
    this.requeued.inc({ queue: this.queue }, 0);
    for (const decision of EGRESS_DECISIONS) this.egressRequests.inc({ queue: this.queue, decision }, 0);
    for (const direction of ["out", "in"]) this.egressBytes.inc({ queue: this.queue, direction }, 0);
    this.snapshotBytes.inc({ queue: this.queue }, 0);
    this.snapshots.inc({ queue: this.queue }, 0);
    for (const kind of KINDS) this.retries.inc({ queue: this.queue, kind }, 0);
    for (const operation of PROVIDER_OPERATIONS) this.providerErrors.inc({ provider: this.provider, operation }, 0);
  }

  /** Counts a provider failure seen outside a job (the readiness check). */
  recordProviderError(operation: ProviderOperation): void {
    this.providerErrors.inc({ provider: this.provider, operation });
  }

  /** Stops listening to the worker and releases the queue-stats reader. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.subscribe("off");
    await withTimeout(this.reader.close(), 1000).catch(() => {});
  }

  private subscribe(method: "on" | "off"): void {
    const l = this.listeners;
    this.worker[method]("job:start", l["job:start"]);
    this.worker[method]("job:phase", l["job:phase"]);
    this.worker[method]("job:finished", l["job:finished"]);
    this.worker[method]("job:retry", l["job:retry"]);
    this.worker[method]("job:requeued", l["job:requeued"]);
    this.egress?.[method]("request", this.onEgress);
  }

  private onFinished(result: JobResult, spec: JobSpec | null): void {
    const track = this.jobs.get(result.id);
    this.jobs.delete(result.id);
    const kind = spec ? kindOf(spec) : "unknown";
    const status = (JOB_STATUSES as readonly string[]).includes(result.status) ? result.status : "error";
    const base = { queue: this.queue, kind, provider: this.provider };
    this.finished.inc({ ...base, status });
    this.phaseSeconds.observe({ ...base, phase: "total" }, result.timings.totalMs / 1000);
    if (status === "killed" && result.reason && (KILL_REASONS as readonly string[]).includes(result.reason)) {
      this.killed.inc({ ...base, reason: result.reason });
    }
    if (result.snapshot) {
      this.snapshots.inc({ queue: this.queue });
      this.snapshotBytes.inc({ queue: this.queue }, result.snapshot.bytes);
    }
    if (result.error) {
      const code = KNOWN_CODES.has(result.error.code) ? result.error.code : "other";
      this.jobErrors.inc({ queue: this.queue, provider: this.provider, code });
      if (PROVIDER_CODE.test(result.error.code)) this.recordProviderError(operationOf(track));
    }
  }

  private sandboxesInUse(): number {
    // A job that left the pipeline without an event (a bug, or a crash in
    // moveToWait) must not count forever: an idle worker holds nothing.
    if (this.worker.activeJobs === 0) this.jobs.clear();
    let n = 0;
    for (const t of this.jobs.values()) if (t.acquired) n++;
    return n;
  }

  /**
   * One Redis read shared by every queue gauge of a scrape, at most one in
   * flight; the scrape waits `timeoutMs` for it and otherwise serves the last
   * good values (the read keeps going and refreshes the cache when it lands).
   */
  private async refreshQueueStats(): Promise<void> {
    if (this.closed) return;
    if (!this.inflight && Date.now() - this.lastReadAt < this.maxAgeMs) return;
    this.inflight ??= (async () => {
      try {
        this.stats = await this.reader.read();
        this.statsUp = 1;
      } catch {
        this.statsUp = 0;
      } finally {
        this.lastReadAt = Date.now();
        this.inflight = undefined;
      }
    })();
    const done = await withTimeout(this.inflight, this.timeoutMs).then(
      () => true,
      () => false,
    );
    if (!done) this.statsUp = 0;
  }
}

/**
 * Queue stats through BullMQ (`Queue.getJobCounts`) on an existing connection,
 * plus the enqueue time of the job at the head of the wait list. Refuses at
 * once when the connection is not ready: the worker's connection queues
 * commands while offline, and a scrape must not add to that queue.
 */
export function bullQueueStatsReader(connection: () => Redis | undefined, queueName: string, prefix: string): QueueStatsReader {
  let queue: Queue | undefined;
  return {
    async read() {
      const redis = connection();
      if (!redis || redis.status !== "ready") throw new Error(`redis connection is ${redis?.status ?? "absent"}`);
      if (!queue) {
        // Shared connection: closing this Queue leaves the worker's connection alone.
        queue = new Queue(queueName, { connection: redis, prefix });
        queue.on("error", () => {});
      }
      const counts = await queue.getJobCounts(...QUEUE_STATES);
      // BullMQ pushes new jobs on the left and takes from the right: the right end waited longest.
      const oldestId = await redis.lindex(queue.keys.wait!, -1);
      const ts = oldestId ? await redis.hget(queue.toKey(oldestId), "timestamp") : null;
      const oldestWaitingAt = ts && Number.isFinite(Number(ts)) ? Number(ts) : null;
      return {
        counts: Object.fromEntries(QUEUE_STATES.map((s) => [s, counts[s] ?? 0])) as Record<QueueState, number>,
        oldestWaitingAt,
      };
    },
    async close() {
      await queue?.close();
    },
  };
}

function kindOf(spec: JobSpec): string {
  return KINDS.has(spec.kind) ? spec.kind : "unknown";
}

function operationOf(track: JobTrack | undefined): ProviderOperation {
  const phase = track?.lastPhase;
  return phase && (PROVIDER_OPERATIONS as readonly string[]).includes(phase) ? (phase as ProviderOperation) : "other";
}
