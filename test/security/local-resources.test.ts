/**
 * Hostile jobs against the limits, through the real pipeline on the local
 * (bubblewrap) provider: the shared table (shared-cases.ts: bombs, filling,
 * floods, wall time, daemons, 32-bit syscalls) plus what is specific to
 * bubblewrap (fork and thread floods, /dev/shm, sparse files, kill -9 -1,
 * hostile neighbours, zombies). Each case asserts its outcome, then that the
 * worker is still healthy (an ordinary job succeeds, no sandbox left behind).
 */
import { statfsSync } from "node:fs";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { requireCommand } from "../support/harness.js";
import { sharedHostileCases } from "./shared-cases.js";
import { FORK_BOMB, MEMORY_BOMB, nextHostPid, nonce, orphanZombiesBetween, startRig, type Rig } from "./support.js";

requireCommand("bwrap", "bubblewrap");
requireCommand("redis-server", "redis-server");
requireCommand("python3", "python3");

const MiB = 1024 * 1024;

describe("security: resource abuse (local provider)", () => {
  let rig: Rig;

  beforeAll(async () => {
    rig = await startRig("sec-res", { concurrency: 2 });
  });
  afterEach(async () => {
    await rig.assertHealthy();
  });
  afterAll(async () => {
    await rig?.close();
  });

  sharedHostileCases(() => rig, { tmpfsSizeCap: false, timeoutKillMs: 3000 });

  it("python fork flood (os.fork in a loop): killed by the pids limit", async () => {
    const code = [
      "import os, time",
      "kids = 0",
      "for _ in range(500):",
      "    try:",
      "        if os.fork() == 0:",
      "            time.sleep(30); os._exit(0)",
      "        kids += 1",
      "    except OSError:",
      "        break",
      "print('forked', kids)",
    ].join("\n");
    const r = await rig.run({ kind: "python", code, limits: { pids: 24, timeoutMs: 5000 } });
    expect(r).toMatchObject({ status: "killed", reason: "pids" });
    expect(Number(/forked (\d+)/.exec(r.stdout)?.[1])).toBeLessThanOrEqual(24);
  });

  it("thread flood: killed by the pids limit (threads count as tasks)", async () => {
    const code = [
      "import threading, time",
      "n = 0",
      "try:",
      "    for _ in range(1000):",
      "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); n += 1",
      "except RuntimeError:",
      "    pass",
      "print('threads', n)",
    ].join("\n");
    const r = await rig.run({ kind: "python", code, limits: { pids: 40, timeoutMs: 5000 } });
    expect(r).toMatchObject({ status: "killed", reason: "pids" });
    expect(Number(/threads (\d+)/.exec(r.stdout)?.[1])).toBeLessThan(40);
  });

  it("filling the workspace: killed/memory, and the host disk is untouched (the work root is a tmpfs)", async () => {
    const root = rig.runtime.provider as unknown as { workRoot: string };
    const freeBefore = statfsSync("/").bfree * statfsSync("/").bsize;
    const r = await rig.run({ kind: "shell", script: "dd if=/dev/zero of=/workspace/fill bs=1M count=512 2>&1; echo dd-exit=$?", limits: { memoryMb: 64 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
    expect(r.stdout).not.toContain("512+0 records out");
    // The work root is a tmpfs: nothing of the 512 MiB reached the host disk.
    expect(statfsSync(root.workRoot).type).toBe(0x01021994); // TMPFS_MAGIC
    const freeAfter = statfsSync("/").bfree * statfsSync("/").bsize;
    expect(freeBefore - freeAfter).toBeLessThan(256 * MiB);
  });

  it("filling /dev/shm: bounded by the sandbox's memory", async () => {
    const r = await rig.run({ kind: "shell", script: "dd if=/dev/zero of=/dev/shm/fill bs=1M count=512 2>&1", limits: { memoryMb: 64 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
  });

  it("a sparse 100 GiB file in the workspace costs no memory, and persisting it stops at the workspace limit", async () => {
    const r = await rig.run({ kind: "shell", script: "truncate -s 100G sparse && ls -l sparse | cut -d' ' -f5", limits: { memoryMb: 64 }, workspace: { persist: true } });
    expect(r).toMatchObject({ status: "killed", reason: "workspace_limit", stdout: "107374182400\n", snapshot: null });
  });

  it("kill -9 -1 inside the sandbox only reaches the sandbox", async () => {
    const r = await rig.run({ kind: "shell", script: "sleep 30 & kill -9 -1; echo survived" });
    expect(["failed", "succeeded"]).toContain(r.status);
    expect(r.timings.execMs).toBeLessThan(5000);
  });

  it("output flood without newlines from many processes: killed/output", async () => {
    const r = await rig.run({ kind: "shell", script: "for i in 1 2 3 4; do (head -c 100000000 /dev/zero &) ; done; wait; sleep 5", limits: { maxOutputBytes: MiB } });
    expect(r).toMatchObject({ status: "killed", reason: "output", stdoutTruncated: true });
  });

  it("hostile neighbours (fork bomb, memory bomb, spinner) do not disturb a job running next to them", async () => {
    const marker = nonce();
    const hostile = [
      { kind: "shell", script: FORK_BOMB, limits: { pids: 32, timeoutMs: 5000 } },
      { kind: "python", code: MEMORY_BOMB, limits: { memoryMb: 64 } },
      { kind: "shell", script: `echo ${marker} > /tmp/mine; echo ${marker} > mine; while :; do :; done`, limits: { timeoutMs: 2000 } },
    ];
    const calm = { kind: "python", code: "import os\nprint(sum(range(10**6)), len([p for p in os.listdir('/proc') if p.isdigit()]), os.listdir('/tmp'), os.listdir('.'))" };
    const ids = (await rig.client.enqueueMany([...hostile, calm, calm])).map((j) => j.id);
    const results = await Promise.all(ids.map((id) => rig.client.waitForResult(id, { timeoutMs: 30_000 })));
    for (const r of results.slice(3)) {
      expect(r, JSON.stringify(r)).toMatchObject({ status: "succeeded" });
      // Its own processes only, an empty /tmp and workspace: nothing of the neighbours.
      expect(r.stdout).toMatch(/^499999500000 [1-4] \[\] \[\]\n$/);
    }
    expect(results[0]).toMatchObject({ status: "killed", reason: "pids" });
    expect(results[1]).toMatchObject({ status: "killed", reason: "memory" });
    expect(results[2]).toMatchObject({ status: "timed_out" });
  });

  it("killed sandboxes leave no zombie processes behind (pid 1 of this machine may never reap them)", async () => {
    for (const script of ["sleep 60", "yes", "setsid sleep 60 & wait"]) {
      const lo = nextHostPid();
      const r = await rig.run({ kind: "shell", script, limits: { timeoutMs: 400, maxOutputBytes: 4096 } });
      const hi = nextHostPid();
      expect(["timed_out", "killed"]).toContain(r.status);
      expect(orphanZombiesBetween(lo, hi), script).toEqual([]);
    }
  });
});
