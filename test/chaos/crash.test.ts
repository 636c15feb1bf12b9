/**
 * Faults with real processes and a real Redis: workers killed with -9 in the
 * middle of a batch, a worker that loses its lock, a job that crashes its
 * worker every time, SIGTERM during a batch.
 */
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import { QueueEvents } from "bullmq";
import { DEFAULT_PREFIX } from "../../producer/redis.js";
import { REDIS_URL, requireCommand, tempDir as makeTempDir, testClient, uniqueQueue, unmountWorkRoot } from "../support/harness.js";
import { spawnWorker, type WorkerProcess } from "../support/worker-process.js";

requireCommand("bwrap", "bubblewrap");
const FIXTURE = join(import.meta.dirname, "../../dist/test/chaos/fixtures/crashing-worker.js");
/** A temp work root, unmounted after the test (killed workers leave their tmpfs). */
function tempDir(tag: string): string {
  const dir = makeTempDir(tag);
  cleanups.push(async () => unmountWorkRoot(dir));
  return dir;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});
function track(w: WorkerProcess): WorkerProcess {
  cleanups.push(() => w.stop("SIGKILL"));
  return w;
}

/** Sandboxes (work dirs and cgroups) whose name says they belong to `pid`. */
function leftovers(workRoot: string, pid: number): string[] {
  const mine = (names: string[]) => names.filter((n) => n.startsWith(`sq-${pid}-`));
  const found = mine(readdirSync(workRoot));
  for (const ctl of ["memory", "pids", "unified"]) {
    try {
      found.push(...mine(readdirSync(`/sys/fs/cgroup/${ctl}/sandqueue`)).map((n) => `${ctl}:${n}`));
    } catch {
      // hierarchy not used on this machine
    }
  }
  return found;
}

describe("chaos: crashes", () => {
  it("kill -9 of two of three workers mid-batch: every job gets exactly one result, nothing is left behind", async () => {
    const queue = uniqueQueue("kill9");
    const workRoot = tempDir("kill9");
    const env = { SANDQUEUE_WORK_DIR: workRoot, SANDQUEUE_CONCURRENCY: "2", SANDQUEUE_LOG: "true" };
    const workers = [0, 1, 2].map(() => track(spawnWorker(queue, env)));
    await Promise.all(workers.map((w) => w.waitFor("worker.started")));
    const client = testClient(queue);
    cleanups.push(() => client.close());
    // Jobs taken back from dead workers show up as 'stalled' events.
    const events = new QueueEvents(queue, { connection: { url: REDIS_URL }, prefix: DEFAULT_PREFIX });
    cleanups.push(() => events.close());
    let stalled = 0;
    events.on("stalled", () => stalled++);
    await events.waitUntilReady();

    const N = 300;
    const jobs = await client.enqueueMany(
      Array.from({ length: N }, (_, i) => ({ kind: "shell", script: `sleep 0.0${(i * 7) % 10}; echo ${i}` })),
    );
    const results = Promise.all(jobs.map((j) => client.waitForResult(j.id, { timeoutMs: 180_000 })));
    await sleep(1000 + Math.random() * 1000);
    await workers[0]!.stop("SIGKILL");
    await sleep(500 + Math.random() * 1500);
    await workers[1]!.stop("SIGKILL");

    const all = await results;
    all.forEach((r, i) => expect(r, `job ${i}`).toMatchObject({ status: "succeeded", stdout: `${i}\n` }));
    expect(new Set(all.map((r) => r.id)).size).toBe(N);
    const counts = await client.counts();
    expect(counts.completed).toBe(N); // one completion per job, none failed
    expect(counts.failed).toBe(0);
    expect(stalled).toBeGreaterThan(0); // the kills hit running jobs, which were redelivered
    const pids = new Set(workers.map((w) => String(w.pid)));
    // Worker ids are host:pid:random.
    for (const r of all) expect(pids.has(r.worker.split(":")[1]!)).toBe(true);

    // The survivor's reaper removes what the dead workers left (interval 1 s).
    await sleep(2500);
    for (const dead of workers.slice(0, 2)) expect(leftovers(workRoot, dead.pid)).toEqual([]);
    const finishedLogs = workers.flatMap((w) => w.events.filter((e) => e.event === "job.finished").map((e) => e.job as string));
    console.log(
      `kill -9 chaos: jobs=${N} kills=2 results=${all.length} unique=${new Set(all.map((r) => r.id)).size} ` +
        `executions-logged=${finishedLogs.length} re-executed=${finishedLogs.length - new Set(finishedLogs).size} ` +
        `redelivered=${stalled} orphans=${workers.slice(0, 2).flatMap((w) => leftovers(workRoot, w.pid)).length}`,
    );
  });

  it("a worker that loses its lock never publishes over the result another worker produced", async () => {
    const queue = uniqueQueue("lock");
    const env = { SANDQUEUE_WORK_DIR: tempDir("lock"), SANDQUEUE_CONCURRENCY: "1", SANDQUEUE_LOCK_DURATION_MS: "2000" };
    const a = track(spawnWorker(queue, env));
    await a.waitFor("worker.started");
    const client = testClient(queue);
    cleanups.push(() => client.close());
    const { id } = await client.enqueue({ kind: "shell", script: "sleep 3; echo finished", limits: { timeoutMs: 30_000 } });
    await sleep(500); // A has it
    a.proc.kill("SIGSTOP"); // paused past its lock
    const b = track(spawnWorker(queue, env));
    const result = await client.waitForResult(id, { timeoutMs: 60_000 });
    expect(result).toMatchObject({ status: "succeeded", stdout: "finished\n", worker: expect.stringContaining(`:${b.pid}`) });
    a.proc.kill("SIGCONT"); // A wakes up and tries to complete the job it no longer owns
    await sleep(4000);
    expect(await client.getResult(id)).toEqual(result);
    expect((await client.counts()).completed).toBe(1);
  });

  it("a job that crashes its worker every time fails after a bounded number of attempts and does not block the queue", async () => {
    const queue = uniqueQueue("crash");
    const env = { SANDQUEUE_WORK_DIR: tempDir("crash"), SANDQUEUE_CONCURRENCY: "1", SANDQUEUE_MAX_STALLED_COUNT: "2" };
    const client = testClient(queue);
    cleanups.push(() => client.close());
    const poison = await client.enqueue({ kind: "shell", script: "echo CRASH-THE-WORKER" });
    const normal = await client.enqueueMany(Array.from({ length: 10 }, (_, i) => ({ kind: "shell", script: `echo ${i}` })));

    // A supervisor (systemd, Kubernetes) restarts the worker each time it dies.
    let deaths = 0;
    let stopped = false;
    let current: WorkerProcess | undefined;
    const supervise = (async () => {
      while (!stopped && deaths < 10) {
        current = spawnWorker(queue, env, [], [FIXTURE, queue]);
        const code = await current.exited;
        if (!stopped && code !== 0) deaths++;
      }
    })();
    cleanups.push(async () => {
      stopped = true;
      await current?.stop("SIGKILL");
      await supervise;
    });

    const results = await Promise.all(normal.map((j) => client.waitForResult(j.id, { timeoutMs: 90_000 })));
    results.forEach((r, i) => expect(r).toMatchObject({ status: "succeeded", stdout: `${i}\n` }));
    const poisoned = await client.waitForResult(poison.id, { timeoutMs: 90_000 });
    expect(poisoned.status).toBe("error");
    expect(poisoned.error?.code).toBe(ErrorCodes.WORKER_LOST);
    expect(deaths).toBeGreaterThanOrEqual(1);
    expect(deaths).toBeLessThanOrEqual(3); // maxStalledCount + 1 starts at most
  });

  it("SIGTERM during a batch: in-flight jobs finish or go back to the queue; none lost, none completed twice", async () => {
    const queue = uniqueQueue("term");
    const env = { SANDQUEUE_WORK_DIR: tempDir("term"), SANDQUEUE_CONCURRENCY: "2", SANDQUEUE_SHUTDOWN_GRACE_MS: "300" };
    const a = track(spawnWorker(queue, env));
    const b = track(spawnWorker(queue, env));
    await Promise.all([a.waitFor("worker.started"), b.waitFor("worker.started")]);
    const client = testClient(queue);
    cleanups.push(() => client.close());
    const N = 40;
    const jobs = await client.enqueueMany(
      Array.from({ length: N }, (_, i) => ({ kind: "shell", script: `sleep 0.${(i * 3) % 8}; echo ${i}` })),
    );
    const results = Promise.all(jobs.map((j) => client.waitForResult(j.id, { timeoutMs: 120_000 })));
    await sleep(800);
    expect(await a.stop("SIGTERM")).toBe(0);
    const all = await results;
    all.forEach((r, i) => expect(r).toMatchObject({ status: "succeeded", stdout: `${i}\n` }));
    const finished = [...a.events, ...b.events].filter((e) => e.event === "job.finished").map((e) => e.job);
    expect(finished).toHaveLength(N);
    expect(new Set(finished).size).toBe(N);
    const requeued = a.events.filter((e) => e.event === "job.requeued").length;
    console.log(`SIGTERM chaos: jobs=${N} finished-by-a=${a.events.filter((e) => e.event === "job.finished").length} requeued=${requeued}`);
  });
});
