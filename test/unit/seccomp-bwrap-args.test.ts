/**
 * The sandbox policy carries the seccomp fd and the /proc mask (the kernel
 * side of both is checked in test/security).
 */
import { describe, expect, it } from "vitest";
import { buildBwrapArgs } from "../../providers/local/bwrap-args.js";
import { procMaskOps } from "../../providers/local/proc-mask.js";

const base = { rootOps: ["--ro-bind", "/usr", "/usr"], workspaceHostDir: "/host/ws", argv: ["sh", "-c", "true"], uid: 1000, gid: 1000 };

describe("buildBwrapArgs: seccomp and /proc", () => {
  it("passes the seccomp fd when given, and only then", () => {
    const args = buildBwrapArgs({ ...base, seccompFd: 4 });
    expect(args[args.indexOf("--seccomp") + 1]).toBe("4");
    expect(args.indexOf("--seccomp")).toBeLessThan(args.indexOf("--"));
    expect(buildBwrapArgs(base)).not.toContain("--seccomp");
  });

  it("makes /proc/sys read-only right after mounting /proc", () => {
    const args = buildBwrapArgs(base);
    const proc = args.indexOf("--proc");
    expect(args.slice(proc, proc + 5)).toEqual(["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]);
    const mask = procMaskOps();
    expect(args.slice(proc + 2, proc + 2 + mask.length)).toEqual(mask);
  });
});
