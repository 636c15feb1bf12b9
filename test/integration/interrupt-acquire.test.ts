/**
 * Cancel and shutdown while a sandbox is being acquired, through real
 * workers, real Redis and the real local provider behind a slow acquire. The
 * provider answers the abort as it always has (a retryable PROVIDER_FAILED);
 * the worker classifies by its own signal: a shutdown puts the job back
 * without spending an attempt, a cancel ends it killed/cancelled, and
 * neither retries the job or counts as a provider error.
 */
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { DEFAULT_PREFIX } from "../../producer/redis.js";
import { LocalProvider } from "../../providers/local/index.js";
import type { Sandbox, SandboxProvider, SandboxSpec } from "../../providers/provider.js";
import { parseWorkerConfig } from "../../worker/config.js";
import { silentLogger } from "../../worker/log.js";
import { WorkerMetrics } from "../../worker/metrics.js";
import { startWorkerRuntime, type WorkerRuntime } from "../../worker/runtime.js";
import { REDIS_URL, requireCommand, startTestWorker, testClient, uniqueQueue } from "../support/harness.js";

requireCommand("bwrap", "bubblewrap");

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

/**
 * The real local provider with an acquire that waits (a slow backend) until
 * the job's signal fires, then asks the real provider, which answers an
 * aborted signal as it does today.
 */
class SlowAcquire implements SandboxProvider {
  readonly name: string;
  readonly capabilities: SandboxProvider["capabilities"];
  acquires = 0;
  private entered: (() => void)[] = [];

  constructor(readonly inner: LocalProvider) {
    this.name = inner.name;
    this.capabilities = inner.capabilities;
  }

  /** Resolves once an acquire has started. */
  acquiring(): Promise<void> {
    return new Promise((r) => this.entered.push(r));
  }

  async acquire(spec: SandboxSpec, opts: { signal?: AbortSignal }): Promise<Sandbox> {
    this.acquires++;
    for (const r of this.entered.splice(0)) r();
    // Bounded, so a worker that never aborts still finishes the test.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 15_000);
      opts.signal?.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
    });
    return this.inner.acquire(spec, opts);
  }

  check(): Promise<void> {
    return this.inner.check();
  }

  async close(): Promise<void> {}
}

async function slowWorker(queue: string, workerId: string) {
  const workRoot = await mkdtemp(path.join(os.tmpdir(), "sandq-interrupt-"));
  cleanups.push(() => rm(workRoot, { recursive: true, force: true }));
  const inner = new LocalProvider({ workRoot, owner: workerId });
  cleanups.push(() => inner.close());
  const provider = new SlowAcquire(inner);
  const config = parseWorkerConfig({ REDIS_URL }, {}, {
    queue,
    workerId,
    metricsPort: 0,
    logJobs: false,
    concurrency: 1,
    stalledIntervalMs: 2000,
    lockDurationMs: 10_000,
  });
  const rt: WorkerRuntime = await startWorkerRuntime(config, silentLogger, { provider });
  cleanups.push(() => rt.close(0));
  const registry = new Registry();
  const metrics = new WorkerMetrics({
    registry,
    worker: rt.worker,
    provider: provider.name,
    defaultMetrics: false,
    queueStats: { read: () => Promise.reject(new Error("not read in this test")), close: async () => {} },
  });
  cleanups.push(() => metrics.close());
  const retries: string[] = [];
  rt.worker.on("job:retry", ({ jobId, error }) => retries.push(`${jobId}: ${error.code}`));
  return { rt, provider, inner, registry, retries };
}

/** Sum of a counter over every label set. */
async function total(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`metric ${name} not registered`);
  const { values } = await metric.get();
  return values.filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val)).reduce((n, v) => n + v.value, 0);
}

async function bullJob(queue: string, id: string) {
  const connection = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
  const q = new Queue(queue, { connection, prefix: DEFAULT_PREFIX });
  try {
    const job = await q.getJob(id);
    return { attemptsMade: job?.attemptsMade, state: await job?.getState() };
  } finally {
    await q.close();
    connection.disconnect();
  }
}

describe("interrupted while acquiring a sandbox", () => {
  it("a shutdown puts the job back with no attempt spent; another worker then runs it once", async () => {
    const queue = uniqueQueue("acq-shutdown");
    const a = await slowWorker(queue, "acq-shutdown-a");
    const requeued: string[] = [];
    a.rt.worker.on("job:requeued", ({ jobId }) => requeued.push(jobId));
    const client = testClient(queue);
    cleanups.push(() => client.close());

    const acquiring = a.provider.acquiring();
    const { id } = await client.enqueue({ kind: "shell", script: "echo ran" });
    await acquiring;
    await a.rt.close(0); // the grace period is over at once: the running job's signal fires with "shutdown"

    expect(requeued).toEqual([id]);
    expect(a.retries).toEqual([]);
    expect(await bullJob(queue, id)).toEqual({ attemptsMade: 0, state: "waiting" });
    expect(await total(a.registry, "sandqueue_provider_errors_total")).toBe(0);
    expect(await total(a.registry, "sandqueue_job_retries_total")).toBe(0);
    expect(await total(a.registry, "sandqueue_jobs_requeued_total")).toBe(1);
    expect(await total(a.registry, "sandqueue_jobs_finished_total")).toBe(0);
    expect(await a.inner.resources()).toEqual([]); // the aborted acquire created nothing

    const b = await startTestWorker(queue, { workerId: "acq-shutdown-b" });
    cleanups.push(() => b.close(0));
    const result = await client.waitForResult(id, { timeoutMs: 30_000 });
    expect(result).toMatchObject({ status: "succeeded", stdout: "ran\n", attempts: 1, worker: "acq-shutdown-b", error: null });
  });

  it("a cancel ends the job killed/cancelled without a retry or a provider error", async () => {
    const queue = uniqueQueue("acq-cancel");
    const c = await slowWorker(queue, "acq-cancel-c");
    const client = testClient(queue);
    cleanups.push(() => client.close());

    const acquiring = c.provider.acquiring();
    const { id } = await client.enqueue({ kind: "shell", script: "echo ran" });
    await acquiring;
    expect(await client.cancel(id)).toBe(true);
    const result = await client.waitForResult(id, { timeoutMs: 30_000 });

    expect(result).toMatchObject({ status: "killed", reason: "cancelled", stdout: "", attempts: 1, worker: "acq-cancel-c", error: null });
    expect(c.retries).toEqual([]);
    expect(c.provider.acquires).toBe(1);
    expect((await bullJob(queue, id)).state).toBe("completed");
    expect(await total(c.registry, "sandqueue_provider_errors_total")).toBe(0);
    expect(await total(c.registry, "sandqueue_job_retries_total")).toBe(0);
    expect(await total(c.registry, "sandqueue_jobs_killed_total", { reason: "cancelled" })).toBe(1);
    expect(await c.inner.resources()).toEqual([]);
  });
});
