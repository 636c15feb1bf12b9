/**
 * The seccomp policy of local sandboxes, compiled to the classic-BPF program
 * bwrap loads with `--seccomp FD` (an array of `struct sock_filter`, 8 bytes
 * each, little-endian: u16 code, u8 jt, u8 jf, u32 k).
 *
 * A deny list, not an allow list: the sandbox runs arbitrary user programs
 * (shell, python, whatever they exec), so the policy removes the kernel
 * interfaces a confined, capability-less process has no business with and
 * that keep showing up in privilege-escalation bugs (namespaces, mounts,
 * keyrings, bpf, perf, userfaultfd, ptrace, module loading, terminal input
 * injection). Everything else is allowed. Compiled once per process.
 *
 * Only x86-64 is supported; any other audit arch (i386 via int 0x80) and the
 * x32 ABI (syscall numbers with bit 30 set) kill the process.
 */

/** Syscall numbers on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl). */
export const X86_64_SYSCALLS = {
  ioctl: 16,
  clone: 56,
  ptrace: 101,
  syslog: 103,
  uselib: 134,
  personality: 135,
  vhangup: 153,
  pivot_root: 155,
  chroot: 161,
  acct: 163,
  mount: 165,
  umount2: 166,
  swapon: 167,
  swapoff: 168,
  reboot: 169,
  iopl: 172,
  ioperm: 173,
  init_module: 175,
  delete_module: 176,
  quotactl: 179,
  lookup_dcookie: 212,
  kexec_load: 246,
  add_key: 248,
  request_key: 249,
  keyctl: 250,
  unshare: 272,
  perf_event_open: 298,
  name_to_handle_at: 303,
  open_by_handle_at: 304,
  setns: 308,
  process_vm_readv: 310,
  process_vm_writev: 311,
  finit_module: 313,
  kexec_file_load: 320,
  bpf: 321,
  userfaultfd: 323,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  clone3: 435,
  mount_setattr: 442,
} as const;

export type SyscallName = keyof typeof X86_64_SYSCALLS;

/** Denied outright with EPERM. */
export const DENIED_SYSCALLS: readonly SyscallName[] = [
  // debugging / reading other processes' memory
  "ptrace", "process_vm_readv", "process_vm_writev",
  // namespaces and the mount table (also the new mount API)
  "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
  "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
  // kernel keyrings, bpf, perf, userfaultfd, io_uring: large attack surface
  "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
  "io_uring_setup", "io_uring_enter", "io_uring_register",
  // the machine itself
  "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
  "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "vhangup", "uselib",
  "iopl", "ioperm", "lookup_dcookie",
  // file handles bypass path-based confinement (the "shocker" escape)
  "open_by_handle_at", "name_to_handle_at",
];

/** ioctl requests denied: pushing input into a terminal, console tricks. */
export const TIOCSTI = 0x5412;
export const TIOCLINUX = 0x541c;
export const DENIED_IOCTLS: readonly number[] = [TIOCSTI, TIOCLINUX];

/** clone() flags that create namespaces (CLONE_NEWTIME shares a bit with CSIGNAL in clone(), so it is absent). */
export const CLONE_NAMESPACE_FLAGS =
  0x00020000 | // CLONE_NEWNS
  0x02000000 | // CLONE_NEWCGROUP
  0x04000000 | // CLONE_NEWUTS
  0x08000000 | // CLONE_NEWIPC
  0x10000000 | // CLONE_NEWUSER
  0x20000000 | // CLONE_NEWPID
  0x40000000; // CLONE_NEWNET

export const AUDIT_ARCH_X86_64 = 0xc000003e;
const X32_SYSCALL_BIT = 0x40000000;

export const EPERM = 1;
export const ENOSYS = 38;

// linux/filter.h and linux/seccomp.h
const BPF_LD_W_ABS = 0x20;
const BPF_JEQ_K = 0x15;
const BPF_JGE_K = 0x35;
const BPF_JSET_K = 0x45;
const BPF_RET_K = 0x06;
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;

// struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
const OFF_NR = 0;
const OFF_ARCH = 4;
/** Low 32 bits of args[i] (little-endian). */
const offArgLo = (i: number): number => 16 + 8 * i;

export interface SockFilter {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

const stmt = (code: number, k: number): SockFilter => ({ code, jt: 0, jf: 0, k: k >>> 0 });
const jump = (code: number, k: number, jt: number, jf: number): SockFilter => ({ code, jt, jf, k: k >>> 0 });

/**
 * The program as instructions (for tests and for reading). Layout:
 *   arch check -> x32 check -> per-syscall equality tests jumping to shared
 *   return instructions at the end; ioctl and clone branch to small
 *   argument checks.
 */
export function seccompInstructions(): SockFilter[] {
  const denied = DENIED_SYSCALLS.map((n) => X86_64_SYSCALLS[n]);
  // Tail, addressed from the end: [ioctl check][clone check] ALLOW, EPERM, ENOSYS, KILL
  const head: SockFilter[] = [
    stmt(BPF_LD_W_ABS, OFF_ARCH),
    jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
    stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
    stmt(BPF_LD_W_ABS, OFF_NR),
  ];
  // Jumps are relative and at most 255 forward, so the body stays small.
  const ioctlCheck: SockFilter[] = [
    stmt(BPF_LD_W_ABS, offArgLo(1)), // ioctl's request is an unsigned int: the low half is what the kernel uses
    ...DENIED_IOCTLS.map((req, i) => jump(BPF_JEQ_K, req, DENIED_IOCTLS.length - i, 0)),
    stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM),
  ];
  const cloneCheck: SockFilter[] = [
    stmt(BPF_LD_W_ABS, offArgLo(0)),
    jump(BPF_JSET_K, CLONE_NAMESPACE_FLAGS, 1, 0),
    stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM),
  ];
  const rets = {
    allow: stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    eperm: stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM),
    // clone3 takes its flags in a struct seccomp cannot read: ENOSYS makes libc fall back to clone().
    enosys: stmt(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS),
    kill: stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
  };
  // Tests in order; each entry: syscall number and where to jump on equality.
  type Target = "eperm" | "enosys" | "kill" | "ioctl" | "clone";
  const tests: Array<{ k: number; code: number; target: Target }> = [
    { k: X32_SYSCALL_BIT, code: BPF_JGE_K, target: "kill" },
    { k: X86_64_SYSCALLS.ioctl, code: BPF_JEQ_K, target: "ioctl" },
    { k: X86_64_SYSCALLS.clone, code: BPF_JEQ_K, target: "clone" },
    { k: X86_64_SYSCALLS.clone3, code: BPF_JEQ_K, target: "enosys" },
    ...denied.map((k) => ({ k, code: BPF_JEQ_K, target: "eperm" as const })),
  ];
  // After the tests: a fall-through ALLOW, then the targets.
  const blocks: Array<[Target | "allow", SockFilter[]]> = [
    ["allow", [rets.allow]],
    ["eperm", [rets.eperm]],
    ["enosys", [rets.enosys]],
    ["kill", [rets.kill]],
    ["ioctl", ioctlCheck],
    ["clone", cloneCheck],
  ];
  const blockStart = new Map<string, number>();
  let pos = 0;
  for (const [name, ins] of blocks) {
    blockStart.set(name, pos);
    pos += ins.length;
  }
  const body = tests.map((t, i) => {
    // Distance from the instruction after test i to the target block.
    const remainingTests = tests.length - i - 1;
    const jt = remainingTests + blockStart.get(t.target)!;
    if (jt > 255) throw new Error("seccomp program too long for 8-bit jumps");
    return jump(t.code, t.k, jt, 0);
  });
  return [...head, ...body, ...blocks.flatMap(([, ins]) => ins)];
}

/** Serialises instructions as the kernel's struct sock_filter array. */
export function encodeSockFilters(ins: readonly SockFilter[]): Buffer {
  const buf = Buffer.alloc(ins.length * 8);
  ins.forEach((f, i) => {
    buf.writeUInt16LE(f.code, i * 8);
    buf.writeUInt8(f.jt, i * 8 + 2);
    buf.writeUInt8(f.jf, i * 8 + 3);
    buf.writeUInt32LE(f.k >>> 0, i * 8 + 4);
  });
  return buf;
}

let compiled: Buffer | undefined;

/** The program bwrap reads from `--seccomp FD`; compiled once, shared read-only. */
export function seccompProgram(): Buffer {
  if (process.arch !== "x64") throw new Error(`the local provider's seccomp policy supports x86-64 only (this is ${process.arch})`);
  compiled ??= encodeSockFilters(seccompInstructions());
  return compiled;
}

/**
 * A tiny interpreter of the subset of classic BPF this module emits, so the
 * unit tests can check the verdict of each syscall without loading anything.
 */
export function evaluateSeccomp(
  ins: readonly SockFilter[],
  data: { nr: number; arch?: number; args?: readonly number[] },
): number {
  const arch = data.arch ?? AUDIT_ARCH_X86_64;
  const args = data.args ?? [];
  let acc = 0;
  for (let pc = 0; pc < ins.length; pc++) {
    const f = ins[pc]!;
    switch (f.code) {
      case BPF_LD_W_ABS:
        if (f.k === OFF_NR) acc = data.nr >>> 0;
        else if (f.k === OFF_ARCH) acc = arch >>> 0;
        else if (f.k >= 16 && (f.k - 16) % 8 === 0) acc = (args[(f.k - 16) / 8] ?? 0) >>> 0;
        else throw new Error(`unsupported load offset ${f.k}`);
        break;
      case BPF_JEQ_K:
        pc += acc === f.k ? f.jt : f.jf;
        break;
      case BPF_JGE_K:
        pc += acc >= f.k ? f.jt : f.jf;
        break;
      case BPF_JSET_K:
        pc += (acc & f.k) !== 0 ? f.jt : f.jf;
        break;
      case BPF_RET_K:
        return f.k >>> 0;
      default:
        throw new Error(`unsupported BPF code ${f.code}`);
    }
  }
  throw new Error("seccomp program fell off its end");
}
