/**
 * A tighter seccomp profile for Podman containers.
 *
 * Podman's default profile allows `unshare`, `setns`, `mount`, `keyctl`,
 * `clone` with namespace flags and `clone3` to everyone, so a job can create
 * a user namespace and reach kernel code meant for root inside it. Docker's
 * default profile already refuses those without CAP_SYS_ADMIN. This profile
 * is Podman's own default with those calls turned into EPERM (clone only
 * when it asks for a new namespace; clone3 into ENOSYS so libc falls back to
 * the checkable clone).
 *
 * It also covers only the host's native architecture: Podman's default lists
 * the 32-bit ones too (x86 and x32 on amd64), which runc compiles into the
 * filter as well. A syscall from an architecture the filter does not list
 * (`int 0x80` on amd64) kills the process instead of running the i386 table,
 * and runc's per-container seccomp compile (libseccomp, in `runc init`) drops
 * from ~20 ms to ~5 ms of CPU per container (docs/PERFORMANCE.md).
 *
 * Podman's compat API takes the profile as a file path on the engine's host
 * (Docker takes the JSON itself), so it is written once next to the worker;
 * this only applies to an engine on a local unix socket.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Where Podman (containers-common) keeps its default profile. */
export const PODMAN_DEFAULT_PROFILE = "/usr/share/containers/seccomp.json";

const DENIED = ["unshare", "setns", "mount", "umount", "umount2", "pivot_root", "keyctl", "add_key", "request_key", "ptrace", "process_vm_readv", "process_vm_writev"];
/** CLONE_NEWNS|CLONE_NEWCGROUP|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET */
const CLONE_NAMESPACE_FLAGS = 0x7e020000;
const EPERM = 1;
const ENOSYS = 38;

interface Rule {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: { index: number; value: number; valueTwo: number; op: string }[];
  [k: string]: unknown;
}

/** libseccomp's name for the native architecture of a Node `process.arch`. */
const NATIVE_ARCH: Record<string, string> = {
  x64: "SCMP_ARCH_X86_64",
  arm64: "SCMP_ARCH_AARCH64",
  ppc64: "SCMP_ARCH_PPC64LE",
  s390x: "SCMP_ARCH_S390X",
  riscv64: "SCMP_ARCH_RISCV64",
};

export function tightenProfile(base: { syscalls: Rule[]; [k: string]: unknown }, arch: string = process.arch): object {
  const strip = new Set([...DENIED, "clone", "clone3"]);
  const syscalls = base.syscalls
    .map((r) => (r.action === "SCMP_ACT_ALLOW" ? { ...r, names: r.names.filter((n) => !strip.has(n)) } : r))
    .filter((r) => r.names.length > 0);
  syscalls.push(
    { names: DENIED, action: "SCMP_ACT_ERRNO", errnoRet: EPERM },
    {
      names: ["clone"],
      action: "SCMP_ACT_ALLOW",
      args: [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ" }],
    },
    { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS },
  );
  const native = NATIVE_ARCH[arch];
  // Unknown architecture: keep the base archMap (the engine's own choice).
  return native ? { ...base, archMap: [{ architecture: native, subArchitectures: [] }], syscalls } : { ...base, syscalls };
}

/** Writes the tightened profile once and returns its path, or null when Podman's default is not on this host. */
export function podmanProfilePath(defaultProfile = PODMAN_DEFAULT_PROFILE): string | null {
  if (!existsSync(defaultProfile)) return null;
  const json = JSON.stringify(tightenProfile(JSON.parse(readFileSync(defaultProfile, "utf8")) as { syscalls: Rule[] }));
  const file = join(tmpdir(), `sandqueue-seccomp-${createHash("sha256").update(json).digest("hex").slice(0, 16)}.json`);
  if (!existsSync(file)) {
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, json, { mode: 0o644 });
    renameSync(tmp, file);
  }
  return file;
}
