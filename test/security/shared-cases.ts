/**
 * The hostile jobs every provider must contain, as one table run by each
 * provider's security suite (local-resources.test.ts, docker.test.ts), so a
 * case added here is checked everywhere. Where providers legitimately differ,
 * the difference is a named option, not a second copy of the test.
 */
import { expect, it } from "vitest";
import { eventuallyEmpty, FORK_BOMB, hostProcessesWith, inodeFlood, MEMORY_BOMB, nonce, SPREAD_MEMORY_BOMB, type Rig } from "./support.js";

const MiB = 1024 * 1024;

export interface SharedCaseOptions {
  /**
   * The workspace and /tmp are size-capped tmpfs mounts (docker): filling
   * them may end in ENOSPC before the memory limit; otherwise (local: one
   * tmpfs charged to the sandbox's memory cgroup) only the memory limit stops it.
   */
  tmpfsSizeCap: boolean;
  /** Upper bound on the exec time of a job killed at an 800 ms wall-time limit. */
  timeoutKillMs: number;
}

/** A 136-byte static x86-64 ELF that calls getpid through the i386 table (int 0x80) and exits with the result. */
function int80Elf(): Buffer {
  const code = [0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0x89, 0xc7, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05];
  const elf = Buffer.alloc(120 + code.length);
  elf.write("\x7fELF\x02\x01\x01", 0, "latin1");
  elf.writeUInt16LE(2, 16); // ET_EXEC
  elf.writeUInt16LE(0x3e, 18); // x86-64
  elf.writeUInt32LE(1, 20);
  elf.writeBigUInt64LE(0x400078n, 24); // entry: right after the headers
  elf.writeBigUInt64LE(64n, 32); // program headers at 64
  elf.writeUInt16LE(64, 52);
  elf.writeUInt16LE(56, 54);
  elf.writeUInt16LE(1, 56);
  elf.writeUInt32LE(1, 64); // PT_LOAD
  elf.writeUInt32LE(5, 68); // R+X
  elf.writeBigUInt64LE(0x400000n, 80);
  elf.writeBigUInt64LE(0x400000n, 88);
  elf.writeBigUInt64LE(BigInt(elf.length), 96);
  elf.writeBigUInt64LE(BigInt(elf.length), 104);
  elf.writeBigUInt64LE(0x1000n, 112);
  Buffer.from(code).copy(elf, 120);
  return elf;
}

/** Registers the shared cases inside the caller's describe(); `rig()` is read when each case runs. */
export function sharedHostileCases(rig: () => Rig, opts: SharedCaseOptions): void {
  const bounded = (r: { status: string; reason: string | null }, output: string): string => (r.status === "killed" ? (r.reason ?? "") : output);
  const boundedBy = opts.tmpfsSizeCap ? /^memory$|No space left/ : /^memory$/;

  it("fork bomb: killed/pids", async () => {
    const r = await rig().run({ kind: "shell", script: FORK_BOMB, limits: { pids: 32, timeoutMs: 5000 } });
    expect(r).toMatchObject({ status: "killed", reason: "pids" });
  });

  it("memory bomb in one process: killed/memory", async () => {
    const r = await rig().run({ kind: "python", code: MEMORY_BOMB, limits: { memoryMb: 64 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
  });

  it("memory bomb spread over many processes: the first OOM kill ends the whole job (killed/memory, not the timeout)", async () => {
    const r = await rig().run({ kind: "python", code: SPREAD_MEMORY_BOMB, limits: { memoryMb: 96, timeoutMs: 8000 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
  });

  it("inode exhaustion (empty files in a loop) in the workspace and /tmp: bounded", async () => {
    for (const dir of ["/workspace/many", "/tmp/many"]) {
      const r = await rig().run({ kind: "python", code: inodeFlood(dir), limits: { memoryMb: 48, timeoutMs: 6000 } });
      // Inodes and dentries of a tmpfs are charged to the writer's memory cgroup like its pages.
      expect(bounded(r, r.stderr), dir).toMatch(boundedBy);
    }
  });

  it("filling the workspace and /tmp: bounded", async () => {
    for (const dir of ["/workspace", "/tmp"]) {
      const r = await rig().run({ kind: "shell", script: `dd if=/dev/zero of=${dir}/fill bs=1M count=512 2>&1`, limits: { memoryMb: 64 } });
      expect(r.stdout, dir).not.toContain("512+0 records out");
      expect(bounded(r, r.stdout), dir).toMatch(boundedBy);
    }
  });

  for (const stream of ["stdout", "stderr"] as const) {
    it(`output flood on ${stream}: killed/output, the worker's memory stays flat`, async () => {
      const redirect = stream === "stderr" ? " 1>&2" : "";
      const flood = { kind: "shell", script: `yes AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA${redirect}`, limits: { maxOutputBytes: MiB } };
      await rig().run(flood); // warm-up: buffers and pools reach their steady size
      const rssBefore = process.memoryUsage().rss;
      const results = [];
      for (let i = 0; i < 5; i++) results.push(await rig().run(flood));
      const rssAfter = process.memoryUsage().rss;
      for (const r of results) {
        expect(r).toMatchObject({ status: "killed", reason: "output", [`${stream}Truncated`]: true });
        expect(Buffer.byteLength(r[stream])).toBeLessThanOrEqual(MiB);
      }
      expect(rssAfter - rssBefore, `worker RSS grew by ${((rssAfter - rssBefore) / MiB).toFixed(1)} MiB`).toBeLessThan(64 * MiB);
    });
  }

  it("CPU spinning and sleeping both end by the wall-time limit, quickly", async () => {
    for (const script of ["while :; do :; done", "sleep 60", "python3 -c 'while True: pass'", "exec sleep 60"]) {
      const r = await rig().run({ kind: "shell", script, limits: { timeoutMs: 800 } });
      expect(r, script).toMatchObject({ status: "timed_out" });
      expect(r.timings.execMs, script).toBeGreaterThanOrEqual(700);
      expect(r.timings.execMs, script).toBeLessThan(opts.timeoutKillMs);
    }
  });

  it("a job that ignores SIGTERM still ends at the wall time", async () => {
    const r = await rig().run({ kind: "shell", script: "trap '' TERM INT HUP; while :; do sleep 1; done", limits: { timeoutMs: 800 } });
    expect(r).toMatchObject({ status: "timed_out" });
    expect(r.timings.execMs).toBeLessThan(opts.timeoutKillMs);
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
    const r = await rig().run({ kind: "shell", script });
    expect(r).toMatchObject({ status: "succeeded", stdout: "launched\n" });
    for (const m of markers) expect(await eventuallyEmpty(() => hostProcessesWith(`sleep ${m}`), 5000)).toEqual([]);
  });

  it("a daemon of a job killed at its wall time dies too", async () => {
    const m = nonce();
    const r = await rig().run({ kind: "shell", script: `setsid sleep ${m} & sleep 60`, limits: { timeoutMs: 600 } });
    expect(r).toMatchObject({ status: "timed_out" });
    expect(await eventuallyEmpty(() => hostProcessesWith(`sleep ${m}`), 5000)).toEqual([]);
  });

  // Both seccomp filters admit the native architecture only: a syscall
  // through the i386 table (int 0x80 from a 64-bit process) kills the
  // process (SIGSYS) instead of running.
  it("syscalls through the 32-bit table (int 0x80) kill the process", async () => {
    const octal = [...int80Elf()].map((b) => `\\${b.toString(8).padStart(3, "0")}`).join("");
    const script = `printf '${octal}' > int80 && chmod +x int80 && ./int80; echo "rc $?"; uname -m`;
    const r = await rig().run({ kind: "shell", script });
    expect(r.stdout, r.stderr).toMatch(/^x86_64$/m); // the ELF is x86-64 code
    expect(r.stdout, r.stderr).toMatch(/^rc 159$/m); // 128 + SIGSYS
  });
}
