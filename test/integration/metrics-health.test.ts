/**
 * The worker's health endpoints against a real Redis that hangs (SIGSTOP),
 * recovers and dies: every endpoint answers well under a second, readiness
 * follows Redis and the worker's lifecycle, /metrics keeps the last queue
 * counts.
 */
import { spawn } from "node:child_process";
import { afterEach, describe, expect, it } from "vitest";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { freePort, requireCommand, startRedis, startTestWorker, testClient, uniqueQueue } from "../support/harness.js";

requireCommand("bwrap", "bubblewrap");
requireCommand("redis-server", "redis-server");

async function get(url: string): Promise<{ status: number; body: string; ms: number }> {
  const t0 = performance.now();
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: await res.text(), ms: performance.now() - t0 };
}

async function untilReady(base: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while ((await get(`${base}/readyz`)).status !== 200) {
    if (Date.now() > deadline) throw new Error("worker did not turn ready again within 15 s");
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("worker health endpoints", () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  });

  async function worker(redisUrl?: string): Promise<{ runtime: WorkerRuntime; base: string; queue: string }> {
    const queue = uniqueQueue("health");
    const port = await freePort();
    const runtime = await startTestWorker(queue, { metricsPort: port, metricsHost: "127.0.0.1", ...(redisUrl ? { redisUrl } : {}) });
    cleanups.push(() => runtime.close(500));
    return { runtime, base: `http://127.0.0.1:${port}`, queue };
  }

  it("answers fast and turns not ready while Redis hangs or is gone, ready again when it is back", async () => {
    const redis = await startRedis();
    // The harness's stop() waits for an exit that already happened when called twice.
    let redisStopped = false;
    cleanups.push(async () => {
      if (!redisStopped) await redis.stop();
    });
    const { base, queue } = await worker(redis.url);
    const client = testClient(queue, { redisUrl: redis.url });
    cleanups.push(() => client.close());
    const { id } = await client.enqueue({ kind: "shell", script: "true", limits: { timeoutMs: 5000 } });

    const ready = await get(`${base}/readyz`);
    expect(ready.status, ready.body).toBe(200);
    expect(JSON.parse(ready.body)).toEqual({ ready: true, checks: { worker: "ok", redis: "ok", provider: "ok" } });
    const metrics = await get(`${base}/metrics`);
    expect(metrics.body).toMatch(new RegExp(`sandqueue_queue_jobs\\{queue="${queue}",state="(waiting|active|completed)"\\} 1`));
    expect(metrics.body).toContain(`sandqueue_redis_up{queue="${queue}"} 1`);
    // After a job of an image the local provider keeps sandboxes of it started, and says so.
    await client.waitForResult(id, { timeoutMs: 10_000 });
    await expect.poll(async () => (await get(`${base}/metrics`)).body, { timeout: 5000 }).toMatch(/sandqueue_sandboxes_ready\{provider="local",image="host"\} [1-9]/);

    // Hung: the connection still looks ready but nothing answers.
    redis.proc.kill("SIGSTOP");
    try {
      // Queue stats younger than a second are reused without asking Redis.
      await new Promise((r) => setTimeout(r, 1100));
      for (let i = 0; i < 3; i++) {
        const r = await get(`${base}/readyz`);
        expect(r.status).toBe(503);
        expect(r.ms).toBeLessThan(1000);
        expect(JSON.parse(r.body).checks.redis).toMatch(/no answer|connection/);
        const m = await get(`${base}/metrics`);
        expect(m.status).toBe(200);
        expect(m.ms).toBeLessThan(1000);
        expect(m.body).toContain(`sandqueue_redis_up{queue="${queue}"} 0`);
        // The last good counts are still served.
        expect(m.body).toMatch(new RegExp(`sandqueue_queue_jobs\\{queue="${queue}",state="\\w+"\\} 1`));
        const h = await get(`${base}/healthz`);
        expect(h.status).toBe(200);
        expect(h.ms).toBeLessThan(200);
      }
    } finally {
      redis.proc.kill("SIGCONT");
    }
    await untilReady(base);

    // Gone: the connection is reconnecting, checks fail at once.
    await redis.stop();
    redisStopped = true;
    await new Promise((r) => setTimeout(r, 300));
    const down = await get(`${base}/readyz`);
    expect(down.status).toBe(503);
    expect(down.ms).toBeLessThan(1000);
    const m = await get(`${base}/metrics`);
    expect(m.status).toBe(200);
    expect(m.ms).toBeLessThan(1000);

    // Back on the same port: ready again. (Also lets the worker close cleanly;
    // closing it while Redis is still gone is the worker's concern, not this test's.)
    const again = spawn("redis-server", ["--port", String(redis.port), "--bind", "127.0.0.1", "--save", ""], { stdio: "ignore" });
    // Killed last, after the worker has closed.
    cleanups.unshift(async () => {
      again.kill("SIGKILL");
    });
    await untilReady(base);
  });

  it("is not ready from the start of draining, and the server closes after the worker has drained", async () => {
    const { runtime, base, queue } = await worker();
    const client = testClient(queue);
    cleanups.push(() => client.close());
    const { id } = await client.enqueue({ kind: "shell", script: "sleep 2; echo done", limits: { timeoutMs: 10_000 } });
    const deadline = Date.now() + 10_000;
    while (runtime.worker.activeJobs === 0) {
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect((await get(`${base}/readyz`)).status).toBe(200);

    const closed = runtime.close(10_000);
    const draining = await get(`${base}/readyz`);
    expect(draining.status).toBe(503);
    expect(JSON.parse(draining.body).checks.worker).toBe("draining");
    // Still scrapeable while the running job finishes.
    const m = await get(`${base}/metrics`);
    expect(m.body).toContain(`sandqueue_worker_jobs_active{queue="${queue}"} 1`);

    await closed;
    expect((await client.waitForResult(id, { timeoutMs: 5000 })).stdout).toBe("done\n");
    await expect(fetch(`${base}/healthz`, { signal: AbortSignal.timeout(2000) })).rejects.toThrow();
  });

  it("fails start-up naming the setting when the metrics port is taken, and releases what it took", async () => {
    const first = await worker();
    const port = Number(new URL(first.base).port);
    const { startWorkerRuntime } = await import("../../worker/runtime.js");
    const { parseWorkerConfig } = await import("../../worker/config.js");
    const { silentLogger } = await import("../../worker/log.js");
    const queue = uniqueQueue("health-port");
    const config = parseWorkerConfig({ REDIS_URL: process.env.REDIS_URL ?? "redis://127.0.0.1:6379" }, {}, { queue, metricsPort: port, metricsHost: "127.0.0.1" });
    await expect(startWorkerRuntime(config, silentLogger)).rejects.toThrow(/SANDQUEUE_METRICS_PORT/);
    // The half-started worker let go of the queue: a job enqueued now stays waiting.
    const client = testClient(queue);
    cleanups.push(() => client.close());
    await client.enqueue({ kind: "shell", script: "true" });
    await new Promise((r) => setTimeout(r, 500));
    expect((await client.counts()).waiting).toBe(1);
  });
});
