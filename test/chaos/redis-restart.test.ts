/**
 * Redis restarted in the middle of a batch (its own server with append-only
 * persistence): workers and producers reconnect by themselves and the batch
 * completes; producer calls made while Redis is down fail fast and clearly.
 */
import { spawn } from "node:child_process";
import { afterEach, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import { SandqueueClient } from "../../producer/client.js";
import { freePort, requireCommand, tempDir, uniqueQueue, unmountWorkRoot } from "../support/harness.js";
import { spawnWorker, type WorkerProcess } from "../support/worker-process.js";

requireCommand("redis-server", "redis-server");
requireCommand("bwrap", "bubblewrap");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

function startRedisAt(port: number, dir: string) {
  const proc = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
    { stdio: "ignore" },
  );
  const exited = new Promise<void>((r) => proc.on("exit", () => r()));
  return { proc, exited };
}

describe("chaos: Redis restart", () => {
  it("workers and producers reconnect by themselves and the batch completes", async () => {
    const port = await freePort();
    const dir = tempDir("aof");
    let redis = startRedisAt(port, dir);
    cleanups.push(async () => {
      redis.proc.kill("SIGKILL");
      await redis.exited;
    });
    const url = `redis://127.0.0.1:${port}`;
    await sleep(300);
    const queue = uniqueQueue("restart");
    const workRoot = tempDir("restart");
    cleanups.push(async () => unmountWorkRoot(workRoot));
    const env = { REDIS_URL: url, SANDQUEUE_WORK_DIR: workRoot, SANDQUEUE_CONCURRENCY: "2" };
    const workers: WorkerProcess[] = [spawnWorker(queue, env), spawnWorker(queue, env)];
    for (const w of workers) cleanups.push(() => w.stop("SIGKILL"));
    await Promise.all(workers.map((w) => w.waitFor("worker.started")));

    const client = new SandqueueClient({ redisUrl: url, queue, connectTimeoutMs: 1000, backoffMs: 200 });
    cleanups.push(() => client.close());
    const N = 120;
    const jobs = await client.enqueueMany(Array.from({ length: N }, (_, i) => ({ kind: "shell", script: `sleep 0.05; echo ${i}` })));
    const results = Promise.all(jobs.map((j) => client.waitForResult(j.id, { timeoutMs: 120_000 })));

    await sleep(1000);
    redis.proc.kill("SIGTERM"); // a clean restart: the append-only file has every write
    await redis.exited;
    const t0 = Date.now();
    await expect(client.enqueue({ kind: "shell", script: "true" })).rejects.toMatchObject({ code: ErrorCodes.REDIS_UNAVAILABLE });
    expect(Date.now() - t0).toBeLessThan(3000);
    await sleep(1500);
    redis = startRedisAt(port, dir);

    const all = await results;
    all.forEach((r, i) => expect(r).toMatchObject({ status: "succeeded", stdout: `${i}\n` }));
    // The producer works again without being recreated.
    const again = await client.enqueue({ kind: "shell", script: "echo after" });
    expect(await client.waitForResult(again.id, { timeoutMs: 30_000 })).toMatchObject({ stdout: "after\n" });
    expect(workers.every((w) => w.proc.exitCode === null)).toBe(true);
  });

  it("a worker started before Redis waits, says why, and starts once Redis answers", async () => {
    const port = await freePort();
    const url = `redis://127.0.0.1:${port}`;
    const queue = uniqueQueue("late");
    const workRoot = tempDir("late");
    cleanups.push(async () => unmountWorkRoot(workRoot));
    const worker = spawnWorker(queue, { REDIS_URL: url, SANDQUEUE_WORK_DIR: workRoot });
    cleanups.push(() => worker.stop("SIGKILL"));

    const down = await worker.waitFor("worker.redis_unavailable");
    expect(down).toMatchObject({ level: "warn", redis: url });
    expect(String(down.error)).toMatch(/ECONNREFUSED/);
    expect(worker.events.some((e) => e.event === "worker.started")).toBe(false);
    expect(worker.proc.exitCode).toBeNull();

    const redis = startRedisAt(port, tempDir("late-redis"));
    cleanups.push(async () => {
      redis.proc.kill("SIGKILL");
      await redis.exited;
    });
    expect(await worker.waitFor("worker.redis_reconnected")).toMatchObject({ level: "info", redis: url });
    await worker.waitFor("worker.started");
    const client = new SandqueueClient({ redisUrl: url, queue });
    cleanups.push(() => client.close());
    const job = await client.enqueue({ kind: "shell", script: "echo late" });
    expect(await client.waitForResult(job.id, { timeoutMs: 30_000 })).toMatchObject({ status: "succeeded", stdout: "late\n" });
  });
});
