/**
 * Issue 12: a job that nests directories until its host path exceeds
 * PATH_MAX, then writes 50 MB at the bottom. Its workspace sits on the work
 * tmpfs, i.e. in memory; nothing of it may outlive the job: not after
 * release, not when its worker is killed (the next reap takes it, periodic or
 * at start-up), not across SIGTERM. A removal that does fail is logged as an
 * error and retried. Real bwrap, cgroups, Redis and worker processes; the work
 * root is a tmpfs of the test's own, so its usage is what sandboxes left.
 */
import { execFileSync } from "node:child_process";
import { readdirSync, rmdirSync, statfsSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { LocalProvider } from "../../providers/local/index.js";
import type { SandboxSpec } from "../../providers/provider.js";
import { requireCommand, shellRequest, tempDir, testClient, uniqueQueue, unmountWorkRoot } from "../support/harness.js";
import { spawnWorker, type WorkerProcess } from "../support/worker-process.js";

requireCommand("bwrap", "bubblewrap");
requireCommand("find", "findutils");

/** The job of the issue, verbatim: dash's `cd` stops at PATH_MAX inside the sandbox, where the host path is already longer. */
const DEEP_JOB =
  'cd /workspace; d=$(printf "d%.0s" $(seq 250)); while mkdir $d && cd $d; do :; done; head -c 50000000 /dev/zero > $d/big';
const BIG = 50_000_000;
const MiB = 1024 * 1024;

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => undefined);
});

/** A fresh tmpfs as work root (the provider uses a tmpfs it finds there as is). */
function workTmpfs(): string {
  const dir = tempDir("deep");
  execFileSync("mount", ["-t", "tmpfs", "-o", "size=1g,mode=0700", "sandqueue-test", dir]);
  cleanups.push(() => unmountWorkRoot(dir));
  return dir;
}

function usedBytes(dir: string): number {
  const s = statfsSync(dir);
  return (s.blocks - s.bfree) * s.bsize;
}

/** Sandbox directories on the work root, optionally only those of one owner pid. */
function sandboxDirs(root: string, pid?: number): string[] {
  return readdirSync(root).filter((n) => (pid === undefined ? /^sq-\d+-/.test(n) : n.startsWith(`sq-${pid}-`)));
}

/** Longest host path below `dir` (find walks any depth). */
function longestPath(dir: string): number {
  const out = execFileSync("find", [dir, "-printf", "%p\\n"], { maxBuffer: 64 * MiB }).toString();
  return Math.max(...out.split("\n").map((l) => Buffer.byteLength(l)));
}

async function until(what: string, check: () => boolean, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A directory being removed may vanish between listing and reading it. */
/** A sandbox's workspace entries; none while it is being made or removed (the directory is not there). */
function workspaceEntries(root: string, sandboxDir: string): string[] {
  try {
    return readdirSync(path.join(root, sandboxDir, "workspace"));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

function track(w: WorkerProcess): WorkerProcess {
  cleanups.push(() => w.stop("SIGKILL"));
  return w;
}

function workerEnv(root: string): Record<string, string> {
  return { SANDQUEUE_WORK_DIR: root, SANDQUEUE_CONCURRENCY: "1", SANDQUEUE_SHUTDOWN_GRACE_MS: "1000", SANDQUEUE_LOG: "true" };
}

const spec: SandboxSpec = {
  image: "host",
  limits: { memoryMb: 256, pids: 64 },
  network: "none",
  labels: {},
  annotations: {},
  maxLifetimeMs: 600_000,
};

describe("a workspace nested past the host's PATH_MAX", () => {
  it("release removes it and gives its memory back", async () => {
    const root = workTmpfs();
    const provider = new LocalProvider({ workRoot: root, cgroupParent: `sandqueue-test-deep-${process.pid}` });
    cleanups.push(async () => {
      await provider.close();
      for (const dir of provider.cgroupParentDirs) rmdirSync(dir);
    });
    const before = usedBytes(root);
    const box = await provider.acquire(spec, {});
    const r = await box.exec(shellRequest(DEEP_JOB, { timeoutMs: 60_000 }));
    expect(r).toMatchObject({ exitCode: 0, limitHit: null });
    const [dir] = sandboxDirs(root);
    expect(longestPath(path.join(root, dir!))).toBeGreaterThan(4096);
    expect(usedBytes(root) - before).toBeGreaterThan(BIG);

    await box.release();
    expect(sandboxDirs(root)).toEqual([]);
    expect(await provider.resources()).toEqual([]);
    expect(usedBytes(root) - before).toBeLessThan(MiB);
  });

  it("through a worker: gone after the job, and nothing is left after SIGTERM in the middle of another", async () => {
    const root = workTmpfs();
    const queue = uniqueQueue("deep");
    const worker = track(spawnWorker(queue, workerEnv(root)));
    await worker.waitFor("worker.started");
    const client = testClient(queue);
    cleanups.push(() => client.close());

    const { id } = await client.enqueue({ kind: "shell", script: DEEP_JOB, limits: { timeoutMs: 60_000, memoryMb: 256 } });
    expect(await client.waitForResult(id, { timeoutMs: 90_000 })).toMatchObject({ status: "succeeded" });
    // The result is published before the release finishes; the pre-started sandboxes stay (empty).
    // The big file goes first (depth first), so the space is back before the directory chain is gone: wait for both.
    // (A released sandbox's directory may outlive its workspace by a moment: "gone" counts as empty.)
    await until("the job's workspace is removed", () => usedBytes(root) < 8 * MiB && sandboxDirs(root).every((d) => workspaceEntries(root, d).length === 0));

    await client.enqueue({ kind: "shell", script: `${DEEP_JOB}; sleep 120`, limits: { timeoutMs: 300_000, memoryMb: 256 } });
    await until("the second job has written its file", () => usedBytes(root) > BIG);
    expect(await worker.stop("SIGTERM")).toBe(0);
    expect(sandboxDirs(root)).toEqual([]);
    expect(usedBytes(root)).toBeLessThan(MiB);
    expect(worker.events.filter((e) => /release_failed|reap_failed/.test(String(e.event)))).toEqual([]);
  }, 180_000);

  it("a killed worker's leftover is removed by a running worker's reap, and by a new worker's at start-up", async () => {
    const root = workTmpfs();
    const survivor = track(spawnWorker(uniqueQueue("deep-a"), workerEnv(root)));
    await survivor.waitFor("worker.started");
    const client = testClient(uniqueQueue("deep-b"));
    cleanups.push(() => client.close());
    const crashAndLeave = async (): Promise<number> => {
      const w = track(spawnWorker(client.queueName, workerEnv(root)));
      await w.waitFor("worker.started");
      await client.enqueue({ kind: "shell", script: `${DEEP_JOB}; sleep 120`, limits: { timeoutMs: 300_000, memoryMb: 256 } });
      await until("the job has written its file", () => usedBytes(root) > BIG);
      await w.stop("SIGKILL");
      const [leftover] = sandboxDirs(root, w.pid).filter((d) => workspaceEntries(root, d).length > 0);
      expect(longestPath(path.join(root, leftover!))).toBeGreaterThan(4096);
      return w.pid;
    };

    // A worker on this machine reaps it within its reap interval (1 s here).
    const first = await crashAndLeave();
    await until("the running worker reaps the leftover", () => sandboxDirs(root, first).length === 0);
    expect(usedBytes(root)).toBeLessThan(8 * MiB);
    await survivor.waitFor("worker.reaped");

    // With no worker left, the next one to start reaps it before taking jobs.
    await survivor.stop("SIGKILL");
    const second = await crashAndLeave();
    const next = track(spawnWorker(uniqueQueue("deep-c"), workerEnv(root)));
    await next.waitFor("worker.started");
    const events = next.events.map((e) => e.event);
    expect(events.indexOf("worker.reaped")).toBeGreaterThanOrEqual(0);
    expect(events.indexOf("worker.reaped")).toBeLessThan(events.indexOf("worker.started"));
    expect(sandboxDirs(root, second)).toEqual([]);
    expect(usedBytes(root)).toBeLessThan(8 * MiB);
    expect([...survivor.events, ...next.events].filter((e) => /release_failed|reap_failed/.test(String(e.event)))).toEqual([]);
  }, 240_000);

  it("a removal that fails is logged as an error and retried until it succeeds", async () => {
    const root = workTmpfs();
    const queue = uniqueQueue("deep-fail");
    const worker = track(spawnWorker(queue, workerEnv(root)));
    await worker.waitFor("worker.started");
    const client = testClient(queue);
    cleanups.push(() => client.close());
    // A mount inside the workspace (as an operator's stray mount would be): removal must not enter it, so it fails.
    const { id } = await client.enqueue({ kind: "shell", script: "mkdir /workspace/m; sleep 2", limits: { timeoutMs: 30_000 } });
    let mounted = "";
    await until("the job made its directory", () => {
      const d = sandboxDirs(root, worker.pid).find((n) => workspaceEntries(root, n).includes("m"));
      if (d) mounted = path.join(root, d, "workspace", "m");
      return d !== undefined;
    });
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "sandqueue-test-inner", mounted]);
    cleanups.push(() => unmountWorkRoot(mounted));
    execFileSync("sh", ["-c", 'echo precious > "$1"/file', "sh", mounted]);
    expect(await client.waitForResult(id, { timeoutMs: 60_000 })).toMatchObject({ status: "succeeded" });

    const failed = await worker.waitFor("worker.release_failed");
    expect(failed).toMatchObject({ level: "error", job: id });
    expect(String(failed.error)).toMatch(/mount point/);
    await worker.waitFor("worker.reap_failed");
    // The mounted filesystem was not entered.
    expect(execFileSync("cat", [path.join(mounted, "file")]).toString()).toBe("precious\n");

    unmountWorkRoot(mounted);
    await worker.waitFor("worker.reaped");
    expect(sandboxDirs(root).filter((d) => workspaceEntries(root, d).length > 0)).toEqual([]);
  }, 120_000);
});
