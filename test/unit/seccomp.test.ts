/**
 * The local provider's seccomp program, checked instruction by instruction
 * through a small BPF interpreter (the integration suite in test/security
 * checks the same policy against the real kernel).
 */
import { describe, expect, it } from "vitest";
import {
  AUDIT_ARCH_X86_64,
  CLONE_NAMESPACE_FLAGS,
  DENIED_SYSCALLS,
  ENOSYS,
  EPERM,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  TIOCLINUX,
  TIOCSTI,
  X86_64_SYSCALLS,
  encodeSockFilters,
  evaluateSeccomp,
  seccompInstructions,
  seccompProgram,
} from "../../providers/local/seccomp.js";

const ins = seccompInstructions();
const verdict = (nr: number, args: number[] = [], arch = AUDIT_ARCH_X86_64) => evaluateSeccomp(ins, { nr, args, arch });

describe("local seccomp program", () => {
  it("denies every listed syscall with EPERM", () => {
    expect(DENIED_SYSCALLS.length).toBeGreaterThan(30);
    for (const name of DENIED_SYSCALLS) expect(verdict(X86_64_SYSCALLS[name]), name).toBe(SECCOMP_RET_ERRNO | EPERM);
    for (const name of ["ptrace", "mount", "umount2", "pivot_root", "unshare", "setns", "keyctl", "bpf", "userfaultfd", "open_by_handle_at"] as const) {
      expect(DENIED_SYSCALLS).toContain(name);
    }
  });

  it("allows ordinary syscalls (read, write, openat, execve, fork, mmap, socket)", () => {
    for (const nr of [0, 1, 2, 3, 9, 41, 57, 59, 60, 231, 257, 262, 334]) expect(verdict(nr), String(nr)).toBe(SECCOMP_RET_ALLOW);
  });

  it("kills on a foreign architecture and on x32 syscall numbers", () => {
    const AUDIT_ARCH_I386 = 0x40000003;
    expect(verdict(1, [], AUDIT_ARCH_I386)).toBe(SECCOMP_RET_KILL_PROCESS);
    expect(verdict(0x40000000 + 1)).toBe(SECCOMP_RET_KILL_PROCESS);
  });

  it("denies TIOCSTI and TIOCLINUX ioctls only", () => {
    expect(verdict(X86_64_SYSCALLS.ioctl, [0, TIOCSTI])).toBe(SECCOMP_RET_ERRNO | EPERM);
    expect(verdict(X86_64_SYSCALLS.ioctl, [0, TIOCLINUX])).toBe(SECCOMP_RET_ERRNO | EPERM);
    const TCGETS = 0x5401;
    const FIONREAD = 0x541b;
    expect(verdict(X86_64_SYSCALLS.ioctl, [0, TCGETS])).toBe(SECCOMP_RET_ALLOW);
    expect(verdict(X86_64_SYSCALLS.ioctl, [0, FIONREAD])).toBe(SECCOMP_RET_ALLOW);
  });

  it("denies clone with namespace flags, allows fork and thread clones; clone3 is ENOSYS", () => {
    const SIGCHLD = 17;
    const THREAD = 0x003d0f00; // glibc pthread_create flags
    expect(verdict(X86_64_SYSCALLS.clone, [SIGCHLD])).toBe(SECCOMP_RET_ALLOW);
    expect(verdict(X86_64_SYSCALLS.clone, [THREAD])).toBe(SECCOMP_RET_ALLOW);
    const CLONE_NEWUSER = 0x10000000;
    expect(verdict(X86_64_SYSCALLS.clone, [SIGCHLD | CLONE_NEWUSER])).toBe(SECCOMP_RET_ERRNO | EPERM);
    for (let bit = 0; bit < 32; bit++) {
      const flag = (1 << bit) >>> 0;
      if (CLONE_NAMESPACE_FLAGS & flag) expect(verdict(X86_64_SYSCALLS.clone, [flag])).toBe(SECCOMP_RET_ERRNO | EPERM);
    }
    expect(verdict(X86_64_SYSCALLS.clone3)).toBe(SECCOMP_RET_ERRNO | ENOSYS);
  });

  it("encodes struct sock_filter little-endian, 8 bytes each, compiled once", () => {
    const buf = encodeSockFilters([{ code: 0x20, jt: 1, jf: 2, k: 0xc000003e }]);
    expect([...buf]).toEqual([0x20, 0x00, 0x01, 0x02, 0x3e, 0x00, 0x00, 0xc0]);
    const prog = seccompProgram();
    expect(prog.length).toBe(ins.length * 8);
    expect(prog.length / 8).toBeLessThan(4096); // BPF_MAXINSNS
    expect(seccompProgram()).toBe(prog);
    // First instruction loads seccomp_data.arch.
    expect(prog.readUInt16LE(0)).toBe(0x20);
    expect(prog.readUInt32LE(4)).toBe(4);
  });
});
