import { describe, expect, it } from "vitest";
import { tightenProfile } from "../../providers/docker/seccomp-profile.js";

describe("docker provider seccomp profile", () => {
  const base = {
    defaultAction: "SCMP_ACT_ERRNO",
    syscalls: [
      { names: ["read", "unshare", "clone", "clone3", "mount", "keyctl", "setns"], action: "SCMP_ACT_ALLOW" },
      { names: ["unshare"], action: "SCMP_ACT_ALLOW", includes: { caps: ["CAP_SYS_ADMIN"] } },
    ],
  };
  const out = tightenProfile(base) as { defaultAction: string; syscalls: { names: string[]; action: string; errnoRet?: number; args?: unknown[] }[] };

  it("keeps the base profile but allows none of the namespace and keyring calls unconditionally", () => {
    expect(out.defaultAction).toBe("SCMP_ACT_ERRNO");
    const allowed = out.syscalls.filter((r) => r.action === "SCMP_ACT_ALLOW" && !r.args).flatMap((r) => r.names);
    expect(allowed).toContain("read");
    for (const n of ["unshare", "clone", "clone3", "mount", "keyctl", "setns"]) expect(allowed).not.toContain(n);
  });
  it("denies them with EPERM, clone3 with ENOSYS, and allows clone only without namespace flags", () => {
    const rule = (n: string) => out.syscalls.find((r) => r.names.includes(n) && r.action !== "SCMP_ACT_ALLOW");
    expect(rule("unshare")).toMatchObject({ action: "SCMP_ACT_ERRNO", errnoRet: 1 });
    expect(rule("keyctl")).toMatchObject({ action: "SCMP_ACT_ERRNO", errnoRet: 1 });
    expect(rule("clone3")).toMatchObject({ action: "SCMP_ACT_ERRNO", errnoRet: 38 });
    const clone = out.syscalls.find((r) => r.names.includes("clone") && r.action === "SCMP_ACT_ALLOW");
    expect(clone?.args).toEqual([{ index: 0, value: 0x7e020000, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ" }]);
  });
  it("keeps only the host's native architecture (no x86/x32 syscall tables), or the base archMap on an unknown one", () => {
    const withArch = { ...base, archMap: [{ architecture: "SCMP_ARCH_X86_64", subArchitectures: ["SCMP_ARCH_X86", "SCMP_ARCH_X32"] }] };
    expect((tightenProfile(withArch, "x64") as { archMap: unknown }).archMap).toEqual([{ architecture: "SCMP_ARCH_X86_64", subArchitectures: [] }]);
    expect((tightenProfile(withArch, "arm64") as { archMap: unknown }).archMap).toEqual([{ architecture: "SCMP_ARCH_AARCH64", subArchitectures: [] }]);
    expect((tightenProfile(withArch, "mips") as { archMap: unknown }).archMap).toEqual(withArch.archMap);
  });
});
