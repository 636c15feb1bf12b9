/**
 * Hostile jobs against the limits, through the real pipeline on the local
 * (bubblewrap) provider: fork bombs, memory bombs, disk and inode filling,
 * output floods, spinning and sleeping past the wall time, daemons that try
 * to outlive the job. Each case asserts its outcome, then that the worker is
 * still healthy (an ordinary job succeeds, no sandbox left behind).
 */
import { statfsSync } from "node:fs";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { requireCommand } from "../support/harness.js";
import { eventuallyEmpty, FORK_BOMB, hostProcessesWith, inodeFlood, MEMORY_BOMB, SPREAD_MEMORY_BOMB, nextHostPid, nonce, orphanZombiesBetween, startRig, type Rig } from "./support.js";

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

  it("fork bomb: killed by the pids limit, quickly", async () => {
    const r = await rig.run({ kind: "shell", script: FORK_BOMB, limits: { pids: 32, timeoutMs: 5000 } });
    expect(r).toMatchObject({ status: "killed", reason: "pids" });
    expect(r.timings.execMs).toBeLessThan(6000);
  });

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

  it("memory bomb in one process: killed/memory", async () => {
    const r = await rig.run({ kind: "python", code: MEMORY_BOMB, limits: { memoryMb: 64 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
  });

  it("memory bomb spread over many processes: killed/memory for the whole sandbox", async () => {
    const r = await rig.run({ kind: "python", code: SPREAD_MEMORY_BOMB, limits: { memoryMb: 96, timeoutMs: 8000 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
  });

  it("filling the workspace: bounded by the sandbox's memory, the host disk is untouched", async () => {
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

  it("filling /tmp: bounded by the sandbox's memory", async () => {
    const r = await rig.run({ kind: "shell", script: "dd if=/dev/zero of=/tmp/fill bs=1M count=512 2>&1; echo dd-exit=$?", limits: { memoryMb: 64 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
    expect(r.stdout).not.toContain("512+0 records out");
  });

  it("filling /dev/shm: bounded by the sandbox's memory", async () => {
    const r = await rig.run({ kind: "shell", script: "dd if=/dev/zero of=/dev/shm/fill bs=1M count=512 2>&1", limits: { memoryMb: 64 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
  });

  it("inode exhaustion (empty files in a loop) in the workspace and /tmp: killed/memory", async () => {
    for (const dir of ["/workspace/many", "/tmp/many"]) {
      const code = inodeFlood(dir);
      const r = await rig.run({ kind: "python", code, limits: { memoryMb: 48, timeoutMs: 4000 } });
      // Inodes and dentries of a tmpfs are charged to the writer's memory cgroup like its pages.
      expect(r, dir).toMatchObject({ status: "killed", reason: "memory" });
    }
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

  for (const stream of ["stdout", "stderr"] as const) {
    it(`output flood on ${stream}: killed/output, the worker's memory stays flat`, async () => {
      const redirect = stream === "stderr" ? " 1>&2" : "";
      const flood = { kind: "shell", script: `yes AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA${redirect}`, limits: { maxOutputBytes: MiB } };
      await rig.run(flood); // warm-up: buffers and pools reach their steady size
      const rssBefore = process.memoryUsage().rss;
      const results = [];
      for (let i = 0; i < 5; i++) {
        results.push(await rig.run(flood));
      }
      const rssAfter = process.memoryUsage().rss;
      for (const r of results) {
        expect(r).toMatchObject({ status: "killed", reason: "output", [`${stream}Truncated`]: true });
        expect(Buffer.byteLength(r[stream])).toBeLessThanOrEqual(MiB);
      }
      expect(rssAfter - rssBefore, `worker RSS grew by ${((rssAfter - rssBefore) / MiB).toFixed(1)} MiB`).toBeLessThan(64 * MiB);
    });
  }

  it("output flood without newlines from many processes: killed/output", async () => {
    const r = await rig.run({ kind: "shell", script: "for i in 1 2 3 4; do (head -c 100000000 /dev/zero &) ; done; wait; sleep 5", limits: { maxOutputBytes: MiB } });
    expect(r).toMatchObject({ status: "killed", reason: "output", stdoutTruncated: true });
  });

  it("CPU spinning and sleeping both end by the wall-time limit, quickly", async () => {
    for (const script of ["while :; do :; done", "sleep 60", "python3 -c 'while True: pass'", "exec sleep 60"]) {
      const t0 = Date.now();
      const r = await rig.run({ kind: "shell", script, limits: { timeoutMs: 800 } });
      expect(r, script).toMatchObject({ status: "timed_out" });
      expect(r.timings.execMs, script).toBeGreaterThanOrEqual(700);
      expect(r.timings.execMs, script).toBeLessThan(3000);
      expect(Date.now() - t0, script).toBeLessThan(6000);
    }
  });

  it("a job that ignores SIGTERM still ends at the wall time", async () => {
    const r = await rig.run({ kind: "shell", script: "trap '' TERM INT HUP; while :; do sleep 1; done", limits: { timeoutMs: 800 } });
    expect(r).toMatchObject({ status: "timed_out" });
    expect(r.timings.execMs).toBeLessThan(3000);
  });

  it("daemons (setsid, double fork, nohup &, python daemonize) die with the job", async () => {
    const n = nonce();
    const markers = [`${n}1`, `${n}2`, `${n}3`, `${n}4`];
    const script = [
      `setsid sleep ${markers[0]} </dev/null >/dev/null 2>&1 &`,
      `( ( sleep ${markers[1]} </dev/null >/dev/null 2>&1 & ) & )`,
      `nohup sleep ${markers[2]} >/dev/null 2>&1 &`,
      `python3 -c "import os,time\nif os.fork(): os._exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\nos.closerange(0, 3)\nos.execvp('sleep', ['sleep', '${markers[3]}'])" &`,
      "sleep 0.3",
      "echo launched",
    ].join("\n");
    const r = await rig.run({ kind: "shell", script });
    expect(r).toMatchObject({ status: "succeeded", stdout: "launched\n" });
    for (const m of markers) expect(await eventuallyEmpty(() => hostProcessesWith(`sleep ${m}`))).toEqual([]);
  });

  it("a daemon of a job killed at its wall time dies too", async () => {
    const m = nonce();
    const r = await rig.run({ kind: "shell", script: `setsid sleep ${m} & sleep 60`, limits: { timeoutMs: 600 } });
    expect(r).toMatchObject({ status: "timed_out" });
    expect(await eventuallyEmpty(() => hostProcessesWith(`sleep ${m}`))).toEqual([]);
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
