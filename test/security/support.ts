/**
 * Helpers of the security suites: a worker + client per suite, a check that
 * the worker stays healthy after every hostile job, and host-side probes
 * (processes left behind, zombies) that sandbox code cannot fake.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { expect } from "vitest";
import type { SandqueueClient } from "../../producer/client.js";
import type { JobResult } from "../../producer/job-result.js";
import type { WorkerConfig } from "../../worker/config.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { startTestWorker, testClient, uniqueQueue } from "../support/harness.js";

export interface Rig {
  queue: string;
  runtime: WorkerRuntime;
  client: SandqueueClient;
  /** Enqueues one spec and waits for its result. */
  run(spec: Record<string, unknown>, waitMs?: number): Promise<JobResult>;
  /** An ordinary job still succeeds and the provider holds no leftover sandbox. */
  assertHealthy(): Promise<void>;
  /** Sandboxes of this worker still on the host after removal settles (local provider). */
  leftoverSandboxes(ms?: number): Promise<string[]>;
  close(): Promise<void>;
}

export async function startRig(tag: string, overrides: Partial<WorkerConfig> = {}, base: Record<string, unknown> = {}): Promise<Rig> {
  const queue = uniqueQueue(tag);
  const runtime = await startTestWorker(queue, { concurrency: 1, ...overrides });
  const client = testClient(queue);
  /**
   * This worker's sandbox directories and cgroups still on the host, once
   * removal settles (results are published before the sandbox's remains are
   * removed). Other test runs share the cgroup parent: only sq-<pid>-... count.
   */
  const leftoverSandboxes = async (ms = 3000): Promise<string[]> => {
    const resources = (runtime.provider as { resources?: () => Promise<string[]> }).resources;
    if (!resources) return [];
    const mine = async () => (await resources.call(runtime.provider)).filter((p) => p.includes(`sq-${process.pid}-`));
    const deadline = Date.now() + ms;
    let left = await mine();
    while (left.length && Date.now() < deadline) {
      await sleep(25);
      left = await mine();
    }
    return left;
  };
  const run = async (spec: Record<string, unknown>, waitMs = 30_000): Promise<JobResult> =>
    client.waitForResult((await client.enqueue({ ...base, ...spec })).id, { timeoutMs: waitMs });
  return {
    queue,
    runtime,
    client,
    run,
    async assertHealthy() {
      const r = await run({ kind: "shell", script: "echo healthy; id -u" });
      expect(r, JSON.stringify(r)).toMatchObject({ status: "succeeded", stdout: expect.stringMatching(/^healthy\n/) });
      expect(await leftoverSandboxes()).toEqual([]);
    },
    leftoverSandboxes,
    async close() {
      await client.close();
      await runtime.close(0);
    },
  };
}

/** Digits only: usable as a `sleep` argument that marks a process's command line. */
export function nonce(): string {
  return String(100_000 + randomBytes(4).readUInt32LE(0));
}

/** Host processes whose command line contains `marker` (a sandbox cannot hide from the host's /proc). */
export function hostProcessesWith(marker: string): string[] {
  const found: string[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${name}/cmdline`, "utf8").replace(/\0/g, " ");
    } catch {
      continue;
    }
    if (cmdline.includes(marker)) found.push(`${name}: ${cmdline}`);
  }
  return found;
}

/** A fresh pid from the host's allocator (pids are handed out in increasing order until they wrap). */
export function nextHostPid(): number {
  return spawnSync("true").pid ?? 0;
}

/**
 * bwrap zombies orphaned to pid 1 with a pid in (lo, hi): sandbox processes
 * started between the two marks whose parent was killed before reaping them.
 * The window keeps other test runs on the machine out.
 */
export function orphanZombiesBetween(lo: number, hi: number): string[] {
  const out: string[] = [];
  for (const name of readdirSync("/proc")) {
    const pid = Number(name);
    if (!(pid > lo && pid < hi)) continue;
    const f = statFields(name);
    // conmon (the container engine's monitor, daemonized to pid 1) is not ours: another suite's or tenant's.
    if (f && f[2] === "Z" && f[3] === "1" && f[1] !== "conmon") out.push(`${name} ${f[1]}`);
  }
  return out;
}

/** Fields of /proc/<pid>/stat with the command (which may hold spaces) as one field. */
function statFields(pid: string): string[] | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    const open = text.indexOf("(");
    const close = text.lastIndexOf(")");
    return [text.slice(0, open - 1), text.slice(open + 1, close), ...text.slice(close + 2).split(" ")];
  } catch {
    return null;
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls until `check` returns an empty list (processes take a moment to be reaped). */
export async function eventuallyEmpty(check: () => string[], ms = 3000): Promise<string[]> {
  const deadline = Date.now() + ms;
  let left = check();
  while (left.length && Date.now() < deadline) {
    await sleep(50);
    left = check();
  }
  return left;
}

/**
 * Shell fork bomb. The top-level shell sleeps instead of `wait`ing: `wait`
 * only covers its own two children, so it could return (and end the whole
 * pid namespace) before the tree reached the pids limit, a clean exit 0.
 */
export const FORK_BOMB = "f() { f | f & }; f; sleep 2";

/** Python memory bomb: 8 MiB at a time until the memory limit stops it. */
export const MEMORY_BOMB = "b = []\nwhile True: b.append(bytearray(8 * 1024 * 1024))";

/** Eight processes of 24 MiB each: only the sandbox-wide limit stops it, no single process is large. */
export const SPREAD_MEMORY_BOMB = [
  "import os, time",
  "for _ in range(8):",
  "    if os.fork() == 0:",
  "        b = bytearray(24 * 1024 * 1024)",
  "        for i in range(0, len(b), 4096): b[i] = 1",
  "        time.sleep(30); os._exit(0)",
  "for _ in range(8): os.wait()",
].join("\n");

/** Python creating empty files in `dir` until something stops it (inodes and dentries, no data). */
export function inodeFlood(dir: string): string {
  return `import os\nos.makedirs('${dir}')\nfor i in range(10**8): open(f'${dir}/{i}', 'w').close()`;
}
