import { describe, expect, it } from "vitest";
import { buildBwrapArgs } from "../../providers/local/bwrap-args.js";
import { imageNameProblem } from "../../providers/local/image-root.js";
import { workspaceSegments } from "../../providers/local/workspace-path.js";

const base = { rootOps: ["--ro-bind", "/usr", "/usr"], workspaceHostDir: "/host/ws", argv: ["python3", "-c", "print(1)"], uid: 1000, gid: 1000 };

/** Value following a flag, e.g. valueOf(args, "--uid"). */
function valueOf(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i < 0 ? undefined : args[i + 1];
}

describe("buildBwrapArgs", () => {
  it("isolates every namespace, drops privileges and clears the environment", () => {
    const args = buildBwrapArgs(base);
    for (const flag of ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--new-session", "--die-with-parent", "--clearenv", "--disable-userns"]) {
      expect(args).toContain(flag);
    }
    expect(valueOf(args, "--uid")).toBe("1000");
    expect(valueOf(args, "--gid")).toBe("1000");
    expect(valueOf(args, "--cap-drop")).toBe("ALL");
    expect(args).not.toContain("--share-net");
  });

  it("binds the workspace read-write at /workspace, makes the root read-only, runs argv after --", () => {
    const args = buildBwrapArgs(base);
    const bind = args.indexOf("--bind");
    expect(args.slice(bind, bind + 3)).toEqual(["--bind", "/host/ws", "/workspace"]);
    const ro = args.lastIndexOf("--remount-ro");
    expect(args[ro + 1]).toBe("/");
    expect(ro).toBeGreaterThan(bind);
    expect(valueOf(args, "--chdir")).toBe("/workspace");
    expect(args.slice(args.indexOf("--") + 1)).toEqual(["python3", "-c", "print(1)"]);
    const tmp = args.indexOf("/tmp");
    expect(args[tmp - 1]).toBe("--tmpfs");
  });

  it("network proxy: the egress directory is bound read-only, and the network namespace stays unshared", () => {
    const args = buildBwrapArgs({ ...base, egress: { hostDir: "/host/egress", sandboxDir: "/sandqueue-egress" } });
    const ro = args.indexOf("/host/egress");
    expect(args.slice(ro - 1, ro + 2)).toEqual(["--ro-bind", "/host/egress", "/sandqueue-egress"]);
    expect(args).toContain("--unshare-net");
    expect(args).not.toContain("--share-net");
    expect(ro).toBeLessThan(args.lastIndexOf("--remount-ro"));
    expect(buildBwrapArgs(base)).not.toContain("/sandqueue-egress");
  });

  it("clears the environment and sets none on the command line (the job's env travels on the request FIFO)", () => {
    const args = buildBwrapArgs(base);
    expect(args).toContain("--clearenv");
    expect(args).not.toContain("--setenv");
  });

  it("argv starting with a dash is not taken as a bwrap option", () => {
    const args = buildBwrapArgs({ ...base, argv: ["--help"] });
    expect(args.slice(-2)).toEqual(["--", "--help"]);
  });

  it("refuses bad input", () => {
    expect(() => buildBwrapArgs({ ...base, argv: [] })).toThrow(/argv is empty/);
    expect(() => buildBwrapArgs({ ...base, argv: ["a\0b"] })).toThrow(/NUL/);
    expect(() => buildBwrapArgs({ ...base, cwd: "relative" })).toThrow(/absolute/);
  });
});

describe("imageNameProblem", () => {
  it("accepts plain and nested names", () => {
    for (const n of ["host", "python-3.11", "team/tool:1.2", "a_b@x"]) expect(imageNameProblem(n)).toBeNull();
  });
  it("rejects escapes", () => {
    for (const n of ["", "/etc", "..", "a/../b", "a//b", "./a", "a/.", "-x", "a b"]) expect(imageNameProblem(n)).not.toBeNull();
  });
});

describe("workspaceSegments", () => {
  it("maps /workspace paths to relative segments", () => {
    expect(workspaceSegments("/workspace")).toEqual([]);
    expect(workspaceSegments("/workspace/")).toEqual([]);
    expect(workspaceSegments("/workspace/a/./b")).toEqual(["a", "b"]);
  });
  it("refuses everything outside /workspace", () => {
    for (const p of ["/etc", "/workspace/../etc", "/workspacex", "workspace/a", "/workspace/a\0", "/"]) {
      expect(() => workspaceSegments(p)).toThrow();
    }
  });
});
