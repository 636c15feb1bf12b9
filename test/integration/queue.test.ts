/**
 * Queue semantics with real Redis and real workers: sharing a queue, graceful
 * shutdown, fail-fast producers, Redis policy, cancelling waiting jobs.
 */
import { afterEach, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import type { JobResult } from "../../producer/job-result.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { REDIS_URL, freePort, requireCommand, startRedis, startTestWorker, testClient, uniqueQueue } from "../support/harness.js";
import { SandqueueClient } from "../../producer/client.js";
import { DEFAULT_PREFIX } from "../../producer/redis.js";
import { Queue } from "bullmq";
import { Redis } from "ioredis";

requireCommand("bwrap", "bubblewrap");

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

async function worker(queue: string, id: string, extra = {}): Promise<{ rt: WorkerRuntime; finished: string[]; requeued: string[] }> {
  const rt = await startTestWorker(queue, { workerId: id, ...extra });
  cleanups.push(() => rt.close(0));
  const finished: string[] = [];
  const requeued: string[] = [];
  rt.worker.on("job:finished", ({ result }) => finished.push(result.id));
  rt.worker.on("job:requeued", ({ jobId }) => requeued.push(jobId));
  return { rt, finished, requeued };
}

describe("queue semantics", () => {
  it("two workers sharing one queue process every job exactly once", async () => {
    const queue = uniqueQueue("share");
    const a = await worker(queue, "worker-a");
    const b = await worker(queue, "worker-b");
    const client = testClient(queue);
    cleanups.push(() => client.close());
    const jobs = await client.enqueueMany(Array.from({ length: 40 }, (_, i) => ({ kind: "shell", script: `echo ${i}; sleep 0.05` })));
    const results = await Promise.all(jobs.map((j) => client.waitForResult(j.id, { timeoutMs: 60_000 })));
    results.forEach((r, i) => expect(r).toMatchObject({ status: "succeeded", stdout: `${i}\n` }));
    const all = [...a.finished, ...b.finished];
    expect(all).toHaveLength(40);
    expect(new Set(all).size).toBe(40);
    expect(a.finished.length).toBeGreaterThan(0);
    expect(b.finished.length).toBeGreaterThan(0);
    expect(new Set(results.map((r) => r.worker))).toEqual(new Set(["worker-a", "worker-b"]));
  });

  it("graceful shutdown lets running jobs finish within the grace period and leaves the rest queued", async () => {
    const queue = uniqueQueue("drain");
    const a = await worker(queue, "drain-a");
    const client = testClient(queue);
    cleanups.push(() => client.close());
    const jobs = await client.enqueueMany(Array.from({ length: 6 }, (_, i) => ({ kind: "shell", script: `sleep 0.7; echo ${i}` })));
    while (a.rt.worker.activeJobs < 2) await new Promise((r) => setTimeout(r, 10));
    await a.rt.close(10_000);
    expect(a.finished.length).toBeGreaterThanOrEqual(2); // the running ones finished
    expect(a.requeued).toEqual([]);
    const b = await worker(queue, "drain-b");
    const results = await Promise.all(jobs.map((j) => client.waitForResult(j.id, { timeoutMs: 30_000 })));
    results.forEach((r, i) => expect(r).toMatchObject({ status: "succeeded", stdout: `${i}\n` }));
    expect(a.finished.length + b.finished.length).toBe(6);
    expect(new Set([...a.finished, ...b.finished]).size).toBe(6);
  });

  it("past the grace period running jobs are stopped and returned to the queue, then finish elsewhere", async () => {
    const queue = uniqueQueue("force");
    const a = await worker(queue, "force-a");
    const client = testClient(queue);
    cleanups.push(() => client.close());
    const { id } = await client.enqueue({ kind: "shell", script: "sleep 2; echo done", limits: { timeoutMs: 20_000 } });
    while (a.rt.worker.activeJobs < 1) await new Promise((r) => setTimeout(r, 10));
    await a.rt.close(200);
    expect(a.requeued).toEqual([id]);
    expect(a.finished).toEqual([]);
    expect(await client.getResult(id)).toBeNull(); // waiting again, not lost
    const b = await worker(queue, "force-b");
    const r = await client.waitForResult(id, { timeoutMs: 20_000 });
    expect(r).toMatchObject({ status: "succeeded", stdout: "done\n", worker: "force-b" });
    expect(b.finished).toEqual([id]);
  });

  it("a producer fails fast with a clear error when Redis is down", async () => {
    const port = await freePort();
    const client = new SandqueueClient({ redisUrl: `redis://127.0.0.1:${port}`, queue: "nowhere", connectTimeoutMs: 1000 });
    cleanups.push(() => client.close());
    const t0 = Date.now();
    await expect(client.enqueue({ kind: "shell", script: "true" })).rejects.toMatchObject({ code: ErrorCodes.REDIS_UNAVAILABLE });
    await expect(client.waitForResult("x", { timeoutMs: 60_000 })).rejects.toMatchObject({ code: ErrorCodes.REDIS_UNAVAILABLE });
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it("a producer call fails instead of hanging when Redis stops answering, and works again after", async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const client = new SandqueueClient({ redisUrl: redis.url, queue: uniqueQueue("paused"), commandTimeoutMs: 500 });
    cleanups.push(() => client.close());
    await client.enqueue({ kind: "shell", script: "true" });
    const admin = new Redis(redis.url);
    cleanups.push(async () => admin.disconnect());
    await admin.call("CLIENT", "PAUSE", "2500", "ALL");
    const t0 = Date.now();
    await expect(client.enqueue({ kind: "shell", script: "true" })).rejects.toMatchObject({
      code: ErrorCodes.REDIS_UNAVAILABLE,
      message: expect.stringContaining("Command timed out"),
    });
    expect(Date.now() - t0).toBeLessThan(2000);
    await new Promise((r) => setTimeout(r, 2600 - (Date.now() - t0)));
    expect((await client.enqueue({ kind: "shell", script: "true" })).id).toBeTruthy();
  });

  it("a worker refuses to start on a Redis that evicts keys", async () => {
    const redis = await startRedis(["--maxmemory-policy", "allkeys-lru"]);
    cleanups.push(() => redis.stop());
    await expect(startTestWorker(uniqueQueue("evict"), { redisUrl: redis.url })).rejects.toMatchObject({
      code: ErrorCodes.REDIS_POLICY,
      message: expect.stringContaining("maxmemory-policy=allkeys-lru"),
    });
  });

  it("shutdown finishes even when Redis is gone", async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const rt = await startTestWorker(uniqueQueue("down"), { redisUrl: redis.url, graceMs: 200 });
    await redis.stop();
    const t0 = Date.now();
    await rt.close(200);
    expect(rt.worker.state).toBe("closed");
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it("cancelling a waiting job removes it; its waiter is told", async () => {
    const queue = uniqueQueue("cancel"); // no worker on this queue
    const client = testClient(queue);
    cleanups.push(() => client.close());
    const { id } = await client.enqueue({ kind: "shell", script: "true" });
    const waiting = client.waitForResult(id, { timeoutMs: 10_000 }).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 100));
    expect(await client.cancel(id)).toBe(true);
    const err = (await waiting) as { code?: string };
    expect([ErrorCodes.JOB_CANCELLED, ErrorCodes.JOB_NOT_FOUND]).toContain(err.code);
    await expect(client.getResult(id)).rejects.toMatchObject({ code: ErrorCodes.JOB_NOT_FOUND });
  });

  it("keeps results for the configured count only", async () => {
    const queue = uniqueQueue("retain");
    await worker(queue, "retain-a");
    const client = testClient(queue, { maxResults: 3 });
    cleanups.push(() => client.close());
    const jobs = await client.enqueueMany(Array.from({ length: 8 }, () => ({ kind: "shell", script: "true" })));
    // Results arrive through the event stream even for jobs already trimmed.
    const results: JobResult[] = await Promise.all(jobs.map((j) => client.waitForResult(j.id, { timeoutMs: 20_000 })));
    expect(results.every((r) => r.status === "succeeded")).toBe(true);
    const counts = await client.counts();
    expect(counts.completed).toBe(3);
  });

  it("a spec written straight into Redis ends SPEC_INVALID on attempt 1, whatever the job data holds", async () => {
    const queue = uniqueQueue("garbage");
    const w = await worker(queue, "garbage-a");
    const retries: string[] = [];
    w.rt.worker.on("job:retry", ({ jobId }) => retries.push(jobId));
    const client = testClient(queue);
    cleanups.push(() => client.close());
    // Past the producer's validation: BullMQ directly, as anything with Redis access could.
    const connection = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
    cleanups.push(async () => connection.disconnect());
    const raw = new Queue(queue, { connection, prefix: DEFAULT_PREFIX });
    cleanups.push(() => raw.close());
    const bad: [data: unknown, says: string][] = [
      [{ v: 1, spec: { kind: "shell", script: "true", image: { toString: 1, valueOf: 1 } } }, 'image: expected an image name (got {"toString":1,"valueOf":1})'],
      [{ v: 1, spec: { kind: "shell", script: "true", image: ["x"] } }, "image: expected an image name"],
      [{ v: 1, spec: JSON.parse('{"kind":"shell","script":"true","files":{"__proto__":"x"}}') as unknown }, 'files["__proto__"]: "__proto__" is not accepted as a key'],
      [{ v: 1, spec: { kind: "shell", script: "a\0b" } }, "script: expected text without NUL bytes"],
      [{ v: 1, spec: "echo hi" }, '(spec): expected a job spec object with a "kind" field (got "echo hi")'],
      [null, "(spec): expected a job spec object"],
      [{ v: 1, spec: { kind: { nested: [1, 2] } } }, 'kind: expected "shell" or "python" (got {"nested":[1,2]})'],
    ];
    const opts = { attempts: 3, backoff: { type: "fixed" as const, delay: 50 } };
    const jobs = await Promise.all(bad.map(([data]) => raw.add("shell", data, opts)));
    const results = await Promise.all(jobs.map((j) => client.waitForResult(j.id!, { timeoutMs: 20_000 })));
    results.forEach((r, i) => {
      expect(r, JSON.stringify(bad[i]![0])).toMatchObject({ status: "error", attempts: 1, error: { code: ErrorCodes.SPEC_INVALID } });
      expect(r.error?.message).toContain(bad[i]![1]);
      expect(typeof r.image).toBe("string");
    });
    expect(retries).toEqual([]);
  });
});
