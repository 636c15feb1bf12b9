/**
 * Local sandboxes belong to the provider that made them, not to the process:
 * several worker runtimes in one process (the queue bench runs two) share the
 * cgroup parent, and one's reaper must never take the other's sandboxes for
 * leftovers. And a sandbox killed by something other than the job's limits
 * is a runner fault (SANDBOX_LOST: retried, then `error`), never the user's `failed`.
 * Real Redis, real bubblewrap, real cgroups.
 */
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import type { SandqueueClient } from "../../producer/client.js";
import { LocalProvider } from "../../providers/local/index.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { requireCommand, startTestWorker, testClient, uniqueQueue } from "../support/harness.js";
import { hostProcessesWith, nonce, sleep } from "../security/support.js";

requireCommand("bwrap", "bubblewrap");
requireCommand("redis-server", "redis-server");

const open: Array<{ close(): Promise<unknown> }> = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

async function worker(tag: string, overrides: Parameters<typeof startTestWorker>[1] = {}, attempts = 3) {
  const queue = uniqueQueue(tag);
  const runtime: WorkerRuntime = await startTestWorker(queue, { concurrency: 1, ...overrides });
  open.push({ close: () => runtime.close(0) });
  const client: SandqueueClient = testClient(queue, { attempts });
  open.push(client);
  expect(runtime.provider).toBeInstanceOf(LocalProvider);
  return { runtime, client, provider: runtime.provider as LocalProvider };
}

/** Polls until a host process's command line contains `marker`. */
async function waitForProcess(marker: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (hostProcessesWith(marker).length === 0) {
    if (Date.now() > deadline) throw new Error(`no process '${marker}' appeared within ${ms} ms`);
    await sleep(10);
  }
}

/**
 * SIGKILLs every process of the sandbox cgroup that runs `marker`, as a
 * foreign reaper does (bwrap's monitor included). Returns how many it killed.
 */
async function killSandboxRunning(provider: LocalProvider, marker: string): Promise<number> {
  await waitForProcess(marker);
  const pid = Number(hostProcessesWith(marker)[0]!.split(":")[0]);
  const procsOf = (dir: string): number[] =>
    (existsSync(path.join(dir, "cgroup.procs")) ? readFileSync(path.join(dir, "cgroup.procs"), "utf8") : "").split("\n").filter(Boolean).map(Number);
  const cgroup = (await provider.resources()).find((dir) => procsOf(dir).includes(pid));
  if (!cgroup) throw new Error(`process ${pid} ('${marker}') is in no sandbox cgroup of this provider`);
  const victims = procsOf(cgroup);
  for (const p of victims) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // gone already: the namespace's processes die with its init
    }
  }
  return victims.length;
}

describe("local sandboxes and other providers of the same process", () => {
  it("a second local runtime's reaper leaves the first one's running and pre-started sandboxes alone", async () => {
    const a = await worker("own-a");
    const b = await worker("own-b");
    // A first job fills a's pre-start pool.
    expect(await a.client.waitForResult((await a.client.enqueue({ kind: "shell", script: "true" })).id, { timeoutMs: 30_000 })).toMatchObject({ status: "succeeded" });
    const deadline = Date.now() + 10_000;
    while (a.provider.idleSandboxes.length === 0 && Date.now() < deadline) await sleep(20);
    const idle = a.provider.idleSandboxes;
    expect(idle.length).toBeGreaterThan(0);

    const marker = `sleep 1.${nonce()}`;
    const job = await a.client.enqueue({ kind: "shell", script: `${marker}; echo survived` });
    await waitForProcess(marker);
    await b.provider.reap();

    const r = await a.client.waitForResult(job.id, { timeoutMs: 30_000 });
    expect(r, JSON.stringify(r)).toMatchObject({ status: "succeeded", stdout: "survived\n", attempts: 1 });
    // The idle pre-started sandboxes still have their cgroups (the reaper would have removed them).
    for (const id of idle.filter((id) => a.provider.idleSandboxes.includes(id))) {
      for (const parent of a.provider.cgroupParentDirs) expect(existsSync(path.join(parent, id)), id).toBe(true);
    }
  });

  it("two local runtimes in one process, both reaping every 50 ms, run back-to-back jobs without a failure (the queue bench's shape)", async () => {
    const a = await worker("own-loop-a", { reapIntervalMs: 50 });
    const b = await worker("own-loop-b", { reapIntervalMs: 50, concurrency: 2 });
    const loop = async (client: SandqueueClient, lanes: number): Promise<unknown[]> => {
      const bad: unknown[] = [];
      const end = Date.now() + 4000;
      await Promise.all(
        Array.from({ length: lanes }, async () => {
          while (Date.now() < end) {
            const r = await client.waitForResult((await client.enqueue({ kind: "shell", script: "sleep 0.05" })).id, { timeoutMs: 30_000 });
            if (r.status !== "succeeded" || r.attempts !== 1) bad.push(r);
          }
        }),
      );
      return bad;
    };
    const [badA, badB] = await Promise.all([loop(a.client, 1), loop(b.client, 2)]);
    expect([...badA, ...badB]).toEqual([]);
  });
});

describe("a sandbox killed by something other than the job's limits", () => {
  it("ends as a retryable runner fault, never `failed`: the retry runs the job", async () => {
    const w = await worker("foreign-kill", {}, 2);
    const marker = `sleep 1.${nonce()}`;
    const job = await w.client.enqueue({ kind: "shell", script: `${marker}; echo ran` });
    expect(await killSandboxRunning(w.provider, marker)).toBeGreaterThan(0);
    const r = await w.client.waitForResult(job.id, { timeoutMs: 30_000 });
    expect(r, JSON.stringify(r)).toMatchObject({ status: "succeeded", stdout: "ran\n", attempts: 2 });
  });

  it("on the last attempt ends `error` with SANDQ_ERR_SANDBOX_LOST", async () => {
    const w = await worker("foreign-kill-last", {}, 1);
    const marker = `sleep 5.${nonce()}`;
    const job = await w.client.enqueue({ kind: "shell", script: `${marker}; echo ran` });
    await killSandboxRunning(w.provider, marker);
    const r = await w.client.waitForResult(job.id, { timeoutMs: 30_000 });
    expect(r, JSON.stringify(r)).toMatchObject({ status: "error", attempts: 1, error: { code: ErrorCodes.SANDBOX_LOST } });
    expect(r.error?.message).toMatch(/killed from outside/);
  });
});
