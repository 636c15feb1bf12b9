/**
 * Worker metrics from synthetic worker events on a fresh Registry, and the
 * health server's answers (fast even when Redis or the provider hang).
 */
import { EventEmitter } from "node:events";
import { Counter, Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { ErrorCodes, SandqueueError } from "../../errors/index.js";
import type { JobResult } from "../../producer/job-result.js";
import { parseJobSpec, type JobSpec } from "../../producer/job-spec.js";
import { parseWorkerConfig } from "../../worker/config.js";
import { startHealthServer, type HealthServer } from "../../worker/health-server.js";
import { WorkerMetrics, type QueueStats, type QueueStatsReader } from "../../worker/metrics.js";
import { EGRESS_DECISIONS, type EgressEvent } from "../../worker/egress/proxy.js";
import type { WorkerEvents, WorkerState } from "../../worker/worker.js";

const QUEUE = "unit-q";
const JOB_ID = "job-7f3a9c1e5b";

class FakeWorker extends EventEmitter<WorkerEvents> {
  config = parseWorkerConfig({}, {}, { queue: QUEUE, concurrency: 4, metricsPort: 0 });
  activeJobs = 0;
  state: WorkerState = "running";
  redis = undefined;
}

function statsReader(stats: QueueStats | (() => Promise<QueueStats>)): QueueStatsReader & { reads: number } {
  const r = {
    reads: 0,
    read: () => {
      r.reads++;
      return typeof stats === "function" ? stats() : Promise.resolve(stats);
    },
    close: async () => {},
  };
  return r;
}

const STATS: QueueStats = {
  counts: { waiting: 5, active: 2, delayed: 1, failed: 0, completed: 9 },
  oldestWaitingAt: Date.now() - 42_000,
};

function result(over: Partial<JobResult>): JobResult {
  return {
    id: JOB_ID,
    status: "succeeded",
    exitCode: 0,
    signal: null,
    stdout: "",
    stderr: "",
    stdoutTruncated: false,
    stderrTruncated: false,
    reason: null,
    timings: { queuedMs: 10, acquireMs: 20, execMs: 30, totalMs: 1500 },
    provider: "local",
    image: "host",
    worker: "w:1",
    attempts: 1,
    snapshot: null,
    error: null,
    ...over,
  };
}

/** Runs one job through the events the worker emits, in order. */
function runJob(w: FakeWorker, id: string, spec: JobSpec, res: Partial<JobResult>, phases: [string, number][]): void {
  w.emit("job:start", { jobId: id, spec, attempt: 1 });
  for (const [phase, seconds] of phases) w.emit("job:phase", { phase, seconds, spec });
  w.emit("job:finished", { result: result({ id, ...res }), spec });
}

async function value(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`metric ${name} not registered`);
  const { values } = await metric.get();
  // Counters and gauges only: one value per label set.
  return values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val))?.value;
}

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function setup(reader: QueueStatsReader = statsReader(STATS), timeoutMs = 100, readySandboxes?: () => Record<string, number>) {
  const worker = new FakeWorker();
  const registry = new Registry();
  const metrics = new WorkerMetrics({
    registry,
    worker,
    provider: "local",
    queueStats: reader,
    queueStatsTimeoutMs: timeoutMs,
    queueStatsMaxAgeMs: 0,
    ...(readySandboxes ? { readySandboxes } : {}),
  });
  cleanups.push(() => metrics.close());
  return { worker, registry, metrics };
}

describe("WorkerMetrics", () => {
  const shell = parseJobSpec({ kind: "shell", script: "echo hi" });
  const python = parseJobSpec({ kind: "python", code: "print(1)" });

  it("counts finished jobs by status, kill reason and error code, and times every phase", async () => {
    const { worker, registry } = setup();
    runJob(worker, "a1", shell, {}, [["queued", 0.01], ["acquire", 0.02], ["exec", 0.3]]);
    runJob(worker, "a2", shell, { status: "failed", exitCode: 3 }, [["exec", 0.1]]);
    runJob(worker, "a3", python, { status: "timed_out" }, [["exec", 0.3]]);
    runJob(worker, "a4", python, { status: "killed", reason: "memory" }, [["exec", 0.2]]);
    runJob(worker, "a5", shell, { status: "error", error: { code: ErrorCodes.IMAGE_NOT_FOUND, message: "no image" } }, [["queued", 0.001], ["acquire", 0.001]]);
    runJob(worker, "a6", shell, { snapshot: { id: "sha256-x", bytes: 4096, files: 2 } }, [["snapshot", 0.05]]);

    const finished = (status: string, kind: string) => value(registry, "sandqueue_jobs_finished_total", { queue: QUEUE, kind, provider: "local", status });
    expect(await finished("succeeded", "shell")).toBe(2);
    expect(await finished("failed", "shell")).toBe(1);
    expect(await finished("timed_out", "python")).toBe(1);
    expect(await finished("killed", "python")).toBe(1);
    expect(await finished("error", "shell")).toBe(1);
    expect(await value(registry, "sandqueue_jobs_killed_total", { reason: "memory", kind: "python" })).toBe(1);
    expect(await value(registry, "sandqueue_job_errors_total", { code: ErrorCodes.IMAGE_NOT_FOUND })).toBe(1);
    expect(await value(registry, "sandqueue_snapshot_bytes_total", { queue: QUEUE })).toBe(4096);
    expect(await value(registry, "sandqueue_snapshots_total", { queue: QUEUE })).toBe(1);
    // The image error happened in acquire: that is the operation it is counted under.
    expect(await value(registry, "sandqueue_provider_errors_total", { provider: "local", operation: "acquire" })).toBe(1);
    expect(await value(registry, "sandqueue_provider_errors_total", { provider: "local", operation: "exec" })).toBe(0);

    const text = await registry.metrics();
    for (const phase of ["queued", "acquire", "exec", "snapshot", "total"]) {
      expect(text).toMatch(new RegExp(`sandqueue_job_phase_duration_seconds_count\\{[^}]*phase="${phase}"[^}]*\\} \\d`));
    }
    // total comes from result.timings.totalMs (1.5 s for each of six jobs).
    expect(text).toMatch(/sandqueue_job_phase_duration_seconds_sum\{queue="unit-q",kind="shell",provider="local",phase="total"\} 6(\.0+)?\n/);
    // shell exec took 0.3 s and 0.1 s.
    expect(text).toMatch(/sandqueue_job_phase_duration_seconds_bucket\{le="0.25",queue="unit-q",kind="shell",provider="local",phase="exec"\} 1\n/);
    expect(text).toMatch(/sandqueue_job_phase_duration_seconds_bucket\{le="0.5",queue="unit-q",kind="shell",provider="local",phase="exec"\} 2\n/);
  });

  it("counts retries, provider errors on retry, and requeues", async () => {
    const { worker, registry } = setup();
    worker.emit("job:start", { jobId: "r1", spec: python, attempt: 1 });
    worker.emit("job:phase", { phase: "queued", seconds: 0, spec: python });
    worker.emit("job:phase", { phase: "acquire", seconds: 0.01, spec: python });
    worker.emit("job:phase", { phase: "exec", seconds: 0.01, spec: python });
    worker.emit("job:retry", { jobId: "r1", error: new SandqueueError(ErrorCodes.PROVIDER_FAILED, "backend broke", { retryable: true }), attempt: 1 });
    worker.emit("job:start", { jobId: "r2", spec: shell, attempt: 1 });
    worker.emit("job:retry", { jobId: "r2", error: new SandqueueError(ErrorCodes.INTERNAL, "bug", { retryable: true }), attempt: 1 });
    worker.emit("job:start", { jobId: "r3", spec: shell, attempt: 1 });
    worker.emit("job:requeued", { jobId: "r3" });

    expect(await value(registry, "sandqueue_job_retries_total", { queue: QUEUE, kind: "python" })).toBe(1);
    expect(await value(registry, "sandqueue_job_retries_total", { queue: QUEUE, kind: "shell" })).toBe(1);
    // Only the provider code counts as a provider error, under the phase that failed.
    expect(await value(registry, "sandqueue_provider_errors_total", { operation: "exec" })).toBe(1);
    expect(await value(registry, "sandqueue_provider_errors_total", { operation: "other" })).toBe(0);
    expect(await value(registry, "sandqueue_jobs_requeued_total", { queue: QUEUE })).toBe(1);
  });

  it("reports saturation: sandboxes held between acquire and the end of the job, active jobs, concurrency", async () => {
    const { worker, registry } = setup();
    worker.activeJobs = 2;
    worker.emit("job:start", { jobId: "s1", spec: shell, attempt: 1 });
    worker.emit("job:start", { jobId: "s2", spec: python, attempt: 1 });
    worker.emit("job:phase", { phase: "queued", seconds: 0, spec: shell });
    expect(await value(registry, "sandqueue_sandboxes_in_use", { provider: "local" })).toBe(0);
    worker.emit("job:phase", { phase: "acquire", seconds: 0.01, spec: shell });
    worker.emit("job:phase", { phase: "acquire", seconds: 0.01, spec: python });
    expect(await value(registry, "sandqueue_sandboxes_in_use", { provider: "local" })).toBe(2);
    expect(await value(registry, "sandqueue_worker_jobs_active")).toBe(2);
    expect(await value(registry, "sandqueue_worker_concurrency")).toBe(4);
    worker.emit("job:finished", { result: result({ id: "s1" }), spec: shell });
    worker.activeJobs = 1;
    expect(await value(registry, "sandqueue_sandboxes_in_use", { provider: "local" })).toBe(1);
    // A job that vanished without an event is forgotten once the worker is idle.
    worker.activeJobs = 0;
    expect(await value(registry, "sandqueue_sandboxes_in_use", { provider: "local" })).toBe(0);
  });

  it("exports the provider's ready pooled sandboxes per image, dropping images the pool let go", async () => {
    let ready: Record<string, number> = { host: 2, "py-3.11": 1 };
    const { registry } = setup(statsReader(STATS), 100, () => ready);
    expect(await value(registry, "sandqueue_sandboxes_ready", { provider: "local", image: "host" })).toBe(2);
    expect(await value(registry, "sandqueue_sandboxes_ready", { provider: "local", image: "py-3.11" })).toBe(1);
    ready = { host: 0 };
    expect(await value(registry, "sandqueue_sandboxes_ready", { provider: "local", image: "host" })).toBe(0);
    expect(await registry.metrics()).not.toContain("py-3.11");
  });

  it("exports queue backlog and the oldest waiting job's age from the stats reader", async () => {
    const { registry } = setup();
    for (const [state, n] of Object.entries(STATS.counts)) {
      expect(await value(registry, "sandqueue_queue_jobs", { queue: QUEUE, state })).toBe(n);
    }
    const age = await value(registry, "sandqueue_queue_oldest_waiting_age_seconds", { queue: QUEUE });
    expect(age).toBeGreaterThanOrEqual(42);
    expect(age).toBeLessThan(60);
    expect(await value(registry, "sandqueue_redis_up")).toBe(1);
  });

  it("serves the last good queue stats, within its timeout, when Redis hangs", async () => {
    let hang = false;
    const reader = statsReader(() => (hang ? new Promise<QueueStats>(() => {}) : Promise.resolve(STATS)));
    const { registry } = setup(reader, 100);
    expect(await value(registry, "sandqueue_queue_jobs", { state: "waiting" })).toBe(5);
    hang = true;
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const text = await registry.metrics();
      expect(performance.now() - t0).toBeLessThan(500);
      expect(text).toContain('sandqueue_queue_jobs{queue="unit-q",state="waiting"} 5');
      expect(text).toContain('sandqueue_redis_up{queue="unit-q"} 0');
    }
    // One hanging read is shared, not one more per scrape.
    expect(reader.reads).toBe(2);
  });

  it("starts every known series at 0, so the first job shows in rate()", async () => {
    const { registry } = setup();
    const text = await registry.metrics();
    for (const status of ["succeeded", "failed", "timed_out", "killed", "error"]) {
      expect(text).toContain(`sandqueue_jobs_finished_total{queue="unit-q",kind="python",provider="local",status="${status}"} 0`);
    }
    expect(text).toContain('sandqueue_jobs_killed_total{queue="unit-q",kind="shell",provider="local",reason="memory"} 0');
    expect(text).toContain('sandqueue_job_phase_duration_seconds_count{queue="unit-q",kind="shell",provider="local",phase="total"} 0');
    expect(text).toContain('sandqueue_provider_errors_total{provider="local",operation="acquire"} 0');
  });

  it("uses Prometheus naming, fixed label sets, and never a job id", async () => {
    const { worker, registry } = setup();
    runJob(worker, JOB_ID, shell, { status: "killed", reason: "output" }, [["queued", 0], ["acquire", 0], ["exec", 0.1]]);
    worker.emit("job:phase", { phase: `weird-${JOB_ID}`, seconds: 1, spec: shell });
    worker.emit("job:finished", { result: result({ id: `${JOB_ID}-2`, status: "error", error: { code: `X_${JOB_ID}`, message: JOB_ID } }), spec: null });
    const text = await registry.metrics();
    expect(text).not.toContain(JOB_ID);

    // image: only on the pool gauge, whose images are the few a pool keeps.
    const allowed = new Set(["queue", "kind", "provider", "status", "phase", "state", "operation", "reason", "code", "le", "image", "decision", "direction"]);
    const json = await registry.getMetricsAsJSON();
    const ours = json.filter((m) => m.name.startsWith("sandqueue_"));
    expect(ours.map((m) => m.name).sort()).toEqual(
      [
        "sandqueue_egress_bytes_total",
        "sandqueue_egress_requests_total",
        "sandqueue_job_errors_total",
        "sandqueue_job_phase_duration_seconds",
        "sandqueue_job_retries_total",
        "sandqueue_jobs_finished_total",
        "sandqueue_jobs_killed_total",
        "sandqueue_jobs_requeued_total",
        "sandqueue_provider_errors_total",
        "sandqueue_queue_jobs",
        "sandqueue_queue_oldest_waiting_age_seconds",
        "sandqueue_redis_up",
        "sandqueue_sandboxes_in_use",
        "sandqueue_sandboxes_ready",
        "sandqueue_snapshot_bytes_total",
        "sandqueue_snapshots_total",
        "sandqueue_worker_concurrency",
        "sandqueue_worker_jobs_active",
      ].sort(),
    );
    for (const m of ours) {
      if (String(m.type) === "counter") expect(m.name).toMatch(/_total$/);
      if (String(m.type) === "histogram") expect(m.name).toMatch(/_seconds$/);
      for (const v of m.values) for (const k of Object.keys(v.labels)) expect(allowed.has(k), `${m.name} label ${k}`).toBe(true);
    }
    // Unknown phases and codes fold into fixed values instead of new series.
    expect(text).not.toContain("weird-");
    expect(text).toContain('sandqueue_job_errors_total{queue="unit-q",provider="local",code="other"} 1');
    expect(text).toContain('sandqueue_jobs_finished_total{queue="unit-q",kind="unknown",provider="local",status="error"} 1');
    // Default process metrics live on the same injected registry.
    expect(text).toContain("process_cpu_user_seconds_total");
  });

  it("counts egress requests by decision and bytes by direction, from zero, without hosts or job ids", async () => {
    const egress = new EventEmitter<{ request: [EgressEvent] }>();
    const registry = new Registry();
    const metrics = new WorkerMetrics({ registry, worker: new FakeWorker(), provider: "local", queueStats: statsReader(STATS), egress, defaultMetrics: false });
    cleanups.push(() => metrics.close());
    for (const decision of EGRESS_DECISIONS) expect(await value(registry, "sandqueue_egress_requests_total", { decision })).toBe(0);
    const e = { job: JOB_ID, scheme: "http" as const, method: "GET", host: "secret-host.example", port: 80, path: "/p", rule: null, status: 200, secrets: [], ms: 1 };
    egress.emit("request", { ...e, decision: "allowed", bytesOut: 10, bytesIn: 1000 });
    egress.emit("request", { ...e, decision: "denied", bytesOut: 0, bytesIn: 0 });
    egress.emit("request", { ...e, decision: "allowed", bytesOut: 5, bytesIn: 24 });
    expect(await value(registry, "sandqueue_egress_requests_total", { decision: "allowed" })).toBe(2);
    expect(await value(registry, "sandqueue_egress_requests_total", { decision: "denied" })).toBe(1);
    expect(await value(registry, "sandqueue_egress_bytes_total", { direction: "out" })).toBe(15);
    expect(await value(registry, "sandqueue_egress_bytes_total", { direction: "in" })).toBe(1024);
    const text = await registry.metrics();
    expect(text).not.toContain(JOB_ID);
    expect(text).not.toContain("secret-host");
    await metrics.close();
    expect(egress.listenerCount("request")).toBe(0);
  });

  it("stops counting after close()", async () => {
    const { worker, registry, metrics } = setup();
    await metrics.close();
    await metrics.close();
    runJob(worker, "c1", shell, {}, []);
    expect(await value(registry, "sandqueue_jobs_finished_total", { status: "succeeded" })).toBe(0);
    expect(worker.listenerCount("job:finished")).toBe(0);
  });
});

describe("health server", () => {
  function fakeRedis(mode: "ok" | "hang" | "down") {
    return {
      status: mode === "down" ? "reconnecting" : "ready",
      pings: 0,
      ping() {
        this.pings++;
        return mode === "hang" ? new Promise<string>(() => {}) : Promise.resolve("PONG");
      },
    };
  }

  async function serve(opts: { redis: ReturnType<typeof fakeRedis>; check?: () => Promise<void>; state?: WorkerState }) {
    const registry = new Registry();
    const worker = { state: opts.state ?? ("running" as WorkerState), redis: opts.redis as never };
    let checkFailures = 0;
    const server: HealthServer = await startHealthServer({
      host: "127.0.0.1",
      port: 0,
      registry,
      worker,
      provider: { check: opts.check ?? (async () => {}) },
      redisTimeoutMs: 300,
      providerTimeoutMs: 300,
      onProviderCheckFailed: () => checkFailures++,
    });
    cleanups.push(() => server.close());
    new Counter({ name: "probe_total", help: "a metric to find in /metrics", registers: [registry] });
    return { server, worker, failures: () => checkFailures };
  }

  async function get(url: string): Promise<{ status: number; body: string; ms: number }> {
    const t0 = performance.now();
    const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
    return { status: res.status, body: await res.text(), ms: performance.now() - t0 };
  }

  it("serves /metrics, /healthz and a ready /readyz", async () => {
    const { server } = await serve({ redis: fakeRedis("ok") });
    const m = await get(`${server.url}/metrics`);
    expect(m.status).toBe(200);
    expect(m.body).toContain("probe_total 0");
    expect((await get(`${server.url}/healthz`)).status).toBe(200);
    const r = await get(`${server.url}/readyz`);
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toEqual({ ready: true, checks: { worker: "ok", redis: "ok", provider: "ok" } });
    expect((await get(`${server.url}/nope`)).status).toBe(404);
  });

  it("answers not ready well under a second when Redis or the provider hang", async () => {
    const redis = fakeRedis("hang");
    const { server, failures } = await serve({ redis, check: () => new Promise(() => {}) });
    for (let i = 0; i < 3; i++) {
      const r = await get(`${server.url}/readyz`);
      expect(r.status).toBe(503);
      expect(r.ms).toBeLessThan(900);
      expect(JSON.parse(r.body).checks).toMatchObject({ worker: "ok", redis: "no answer within 300 ms", provider: "no answer within 300 ms" });
    }
    // The hanging PING is shared by later probes, not repeated.
    expect(redis.pings).toBe(1);
    expect(failures()).toBe(3);
    const h = await get(`${server.url}/healthz`);
    expect(h.status).toBe(200);
    expect(h.ms).toBeLessThan(200);
  });

  it("is not ready with Redis disconnected, or once the worker drains", async () => {
    const redis = fakeRedis("down");
    const { server } = await serve({ redis });
    const r = await get(`${server.url}/readyz`);
    expect(r.status).toBe(503);
    expect(r.ms).toBeLessThan(200);
    expect(redis.pings).toBe(0);

    const ok = await serve({ redis: fakeRedis("ok") });
    expect((await get(`${ok.server.url}/readyz`)).status).toBe(200);
    ok.worker.state = "draining";
    const d = await get(`${ok.server.url}/readyz`);
    expect(d.status).toBe(503);
    expect(JSON.parse(d.body).checks.worker).toBe("draining");
  });

  it("closes idempotently, even with a keep-alive client connected", async () => {
    const { server } = await serve({ redis: fakeRedis("ok") });
    await get(`${server.url}/healthz`);
    await Promise.all([server.close(), server.close()]);
    await server.close();
    await expect(fetch(`${server.url}/healthz`)).rejects.toThrow();
  });

  it("names the setting to change when the port is taken", async () => {
    const { server } = await serve({ redis: fakeRedis("ok") });
    await expect(
      startHealthServer({ host: "127.0.0.1", port: server.port, registry: new Registry(), worker: { state: "running", redis: undefined }, provider: { check: async () => {} } }),
    ).rejects.toThrow(/SANDQUEUE_METRICS_PORT/);
  });
});
