/**
 * The hostile jobs every provider must contain, as one table run by each
 * provider's security suite (local-resources.test.ts, docker.test.ts), so a
 * case added here is checked everywhere. Where providers legitimately differ,
 * the difference is a named option, not a second copy of the test.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { constants as osConstants, tmpdir } from "node:os";
import { join } from "node:path";
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
  /**
   * `limits.pids` is enforced and a hit reported as killed/pids. False
   * (kubernetes: the node's podPidsLimit applies, not the job's, and
   * nothing reports it): a fork bomb must only end within its wall time.
   */
  pidsEvents?: boolean;
}

/** What the probe prints once its first syscall has returned: proof that the syscall ran. */
const SYSCALL_RETURNED = "SYSCALL-RETURNED";
/** The probe's exit code after printing it. */
const RETURNED_RC = 42;

/**
 * A 178-byte static x86-64 ELF: getpid, then (only if that returned) write
 * SYSCALL_RETURNED and exit 42. "int80" makes the getpid through the i386
 * table (int 0x80), "native" through the 64-bit one (syscall): the control
 * that shows the probe itself runs, so a crash of "int80" is the kernel's doing.
 */
function syscallProbeElf(via: "int80" | "native"): Buffer {
  const base = 0x400000;
  const codeAt = 120; // right after the ELF header (64) and one program header (56)
  const first = via === "int80" ? [0xb8, 20, 0, 0, 0, 0xcd, 0x80] : [0xb8, 39, 0, 0, 0, 0x0f, 0x05]; // mov eax, getpid; int 0x80 | syscall
  const msg = Buffer.from(`${SYSCALL_RETURNED}\n`, "latin1");
  const le32 = (n: number) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff];
  const rest = (msgAddr: number) => [
    0xb8, ...le32(1), // mov eax, 1 (write)
    0xbf, ...le32(1), // mov edi, 1 (stdout)
    0xbe, ...le32(msgAddr), // mov esi, msg
    0xba, ...le32(msg.length), // mov edx, len
    0x0f, 0x05, // syscall
    0xb8, ...le32(60), // mov eax, 60 (exit)
    0xbf, ...le32(RETURNED_RC), // mov edi, 42
    0x0f, 0x05, // syscall
  ];
  const codeLen = first.length + rest(0).length;
  const code = [...first, ...rest(base + codeAt + codeLen)];
  const elf = Buffer.alloc(codeAt + code.length + msg.length);
  elf.write("\x7fELF\x02\x01\x01", 0, "latin1");
  elf.writeUInt16LE(2, 16); // ET_EXEC
  elf.writeUInt16LE(0x3e, 18); // x86-64
  elf.writeUInt32LE(1, 20);
  elf.writeBigUInt64LE(BigInt(base + codeAt), 24); // entry
  elf.writeBigUInt64LE(64n, 32); // program headers at 64
  elf.writeUInt16LE(64, 52);
  elf.writeUInt16LE(56, 54);
  elf.writeUInt16LE(1, 56);
  elf.writeUInt32LE(1, 64); // PT_LOAD
  elf.writeUInt32LE(5, 68); // R+X
  elf.writeBigUInt64LE(BigInt(base), 80);
  elf.writeBigUInt64LE(BigInt(base), 88);
  elf.writeBigUInt64LE(BigInt(elf.length), 96);
  elf.writeBigUInt64LE(BigInt(elf.length), 104);
  elf.writeBigUInt64LE(0x1000n, 112);
  Buffer.from(code).copy(elf, codeAt);
  msg.copy(elf, codeAt + code.length);
  return elf;
}

/**
 * What this kernel does with int 0x80 from a 64-bit process outside any
 * sandbox: runs it (32-bit entry present), or kills the process (no entry:
 * CONFIG_IA32_EMULATION off or ia32_emulation=0; SIGSEGV from the #GP).
 */
function hostInt80(): { ran: boolean; rc: number } {
  const dir = mkdtempSync(join(tmpdir(), "sandq-int80-"));
  try {
    const file = join(dir, "int80");
    writeFileSync(file, syscallProbeElf("int80"), { mode: 0o755 });
    const r = spawnSync(file, { encoding: "latin1" });
    const rc = r.status ?? 128 + (r.signal ? osConstants.signals[r.signal] : 0);
    return { ran: r.stdout.includes(SYSCALL_RETURNED), rc };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Registers the shared cases inside the caller's describe(); `rig()` is read when each case runs. */
export function sharedHostileCases(rig: () => Rig, opts: SharedCaseOptions): void {
  const bounded = (r: { status: string; reason: string | null }, output: string): string => (r.status === "killed" ? (r.reason ?? "") : output);
  const boundedBy = opts.tmpfsSizeCap ? /^memory$|No space left/ : /^memory$/;

  if (opts.pidsEvents === false) {
    it("fork bomb: a job asking for a pids limit is refused; without one, the backend's own limit bounds it within its wall time", async () => {
      const refused = await rig().run({ kind: "shell", script: FORK_BOMB, limits: { pids: 32, timeoutMs: 5000 } });
      expect(refused).toMatchObject({ status: "error", error: { code: "SANDQ_ERR_CAPABILITY_UNSUPPORTED", message: expect.stringContaining("limits.pids") } });
      const r = await rig().run({ kind: "shell", script: FORK_BOMB, limits: { timeoutMs: 5000 } });
      expect(["succeeded", "failed", "timed_out"], JSON.stringify(r)).toContain(r.status);
      expect(r.timings.execMs).toBeLessThan(5000 + opts.timeoutKillMs);
    });
  } else {
    it("fork bomb: killed/pids", async () => {
      const r = await rig().run({ kind: "shell", script: FORK_BOMB, limits: { pids: 32, timeoutMs: 5000 } });
      expect(r).toMatchObject({ status: "killed", reason: "pids" });
    });
  }

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
  // process (SIGSYS) instead of running. A kernel without a 32-bit entry
  // kills it before seccomp sees it (SIGSEGV, as outside the sandbox).
  it("syscalls through the 32-bit table (int 0x80) kill the process", async () => {
    const host = hostInt80();
    const write = (name: string, elf: Buffer) => `printf '${[...elf].map((b) => `\\${b.toString(8).padStart(3, "0")}`).join("")}' > ${name}`;
    const script = [
      write("native", syscallProbeElf("native")),
      write("int80", syscallProbeElf("int80")),
      "chmod +x native int80",
      "./native; echo \"native rc $?\"",
      "./int80; echo \"int80 rc $?\"",
      "uname -m",
    ].join("\n");
    const r = await rig().run({ kind: "shell", script });
    expect(r.stdout, r.stderr).toMatch(/^x86_64$/m); // the probes are x86-64 code
    // The control's syscalls run: the probe is sound, so a crash of the int 0x80 one is the kernel's.
    expect(r.stdout, r.stderr).toMatch(new RegExp(`^${SYSCALL_RETURNED}\\nnative rc ${RETURNED_RC}$`, "m"));
    const rc = Number(/^int80 rc (\d+)$/m.exec(r.stdout)?.[1]);
    // The 32-bit getpid never returned (the probe would have printed a second line and exited 42).
    expect(r.stdout.split(SYSCALL_RETURNED).length - 1, `the int 0x80 getpid returned:\n${r.stdout}`).toBe(1);
    const allowed = host.ran ? [159] : [159, host.rc]; // 128 + SIGSYS; or what this kernel does without seccomp
    expect(allowed, `int80 rc ${rc}; outside a sandbox int 0x80 ${host.ran ? "runs" : `ends rc ${host.rc}`}`).toContain(rc);
  });
}
