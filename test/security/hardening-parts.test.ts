/**
 * The local provider's hardening pieces on their own, against the real
 * kernel: the work-root tmpfs (mount, reuse, unmount only when empty), the
 * /proc mask (host-wide sysctls read-only for a sandbox whose uid maps to
 * host root) and the kill helper.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { procMaskOps } from "../../providers/local/proc-mask.js";
import { killAllExcept, waitFor } from "../../providers/local/sandbox-kill.js";
import { mountTypeAt, mountWorkRootTmpfs, type WorkRootMount } from "../../providers/local/workspace-mount.js";
import { requireCommand, tempDir } from "../support/harness.js";

requireCommand("bwrap", "bubblewrap");
requireCommand("mount", "mount");

const TMPFS_MAGIC = 0x01021994;

describe("work-root tmpfs", () => {
  const mounts: WorkRootMount[] = [];
  afterEach(() => {
    for (const m of mounts.splice(0)) {
      rmSync(path.join(m.dir, "x"), { recursive: true, force: true });
      if (mountTypeAt(m.dir) === "tmpfs") execFileSync("umount", [m.dir]);
    }
  });

  it("mounts a nosuid,nodev tmpfs once, reuses an existing one, unmounts only when empty", () => {
    const dir = tempDir("wr");
    expect(mountTypeAt(dir)).toBeNull();
    const a = mountWorkRootTmpfs(dir, { sizeMb: 16 });
    mounts.push(a);
    expect(a.mountedHere).toBe(true);
    expect(statfsSync(dir).type).toBe(TMPFS_MAGIC);
    const line = readFileSync("/proc/self/mountinfo", "utf8").split("\n").find((l) => l.split(" ")[4] === dir)!;
    expect(line).toMatch(/nosuid/);
    expect(line).toMatch(/nodev/);
    // A second provider on the same work root uses it as it is.
    const b = mountWorkRootTmpfs(dir);
    expect(b.mountedHere).toBe(false);
    b.close();
    expect(mountTypeAt(dir)).toBe("tmpfs");
    // Still in use: left mounted (another provider may hold sandboxes there).
    mkdirSync(path.join(dir, "x"));
    a.close();
    expect(mountTypeAt(dir)).toBe("tmpfs");
    execFileSync("umount", [dir]);
    // Empty and mounted by this handle: unmounted on close.
    const e = mountWorkRootTmpfs(dir);
    expect(e.mountedHere).toBe(true);
    e.close();
    expect(mountTypeAt(dir)).toBeNull();
  });

  it("caps the whole tmpfs at sizeMb (the per-sandbox bound is the memory cgroup)", () => {
    const dir = tempDir("wr");
    const m = mountWorkRootTmpfs(dir, { sizeMb: 4 });
    mounts.push(m);
    mkdirSync(path.join(dir, "x"));
    expect(() => writeFileSync(path.join(dir, "x", "big"), Buffer.alloc(8 * 1024 * 1024))).toThrow(/ENOSPC/);
  });

  it("refuses a bad size", () => {
    expect(() => mountWorkRootTmpfs(tempDir("wr"), { sizeMb: 0.5 })).toThrow(/positive integer/);
  });
});

describe("/proc mask", () => {
  it("makes /proc/sys read-only inside bwrap run as root (host-wide sysctls like core_pattern)", async () => {
    const ops = procMaskOps();
    expect(ops.slice(0, 3)).toEqual(["--ro-bind", "/proc/sys", "/proc/sys"]);
    const script = 'v=$(cat /proc/sys/kernel/core_pattern); printf "%s\\n" "$v" > /proc/sys/kernel/core_pattern 2>/dev/null && echo WROTE; echo done';
    const out = await new Promise<string>((resolve, reject) => {
      const p = spawn("bwrap", ["--unshare-user", "--unshare-pid", "--unshare-net", "--uid", "1000", "--gid", "1000", "--cap-drop", "ALL", "--ro-bind", "/", "/", "--proc", "/proc", ...ops, "--dev", "/dev", "--", "sh", "-c", script]);
      let s = "";
      p.stdout.on("data", (d: Buffer) => (s += d.toString()));
      p.on("error", reject);
      p.on("close", () => resolve(s));
    });
    expect(out).toBe("done\n");
  });
});

describe("kill helper", () => {
  it("kills everything listed but the monitor, which is left to exit by itself", async () => {
    const dir = tempDir("procs");
    const victims = [spawn("sleep", ["30"]), spawn("sleep", ["30"])];
    const monitor = spawn("sleep", ["30"]);
    const procs = path.join(dir, "cgroup.procs");
    writeFileSync(procs, [...victims, monitor].map((p) => p.pid).join("\n"));
    const rounds = killAllExcept(procs, monitor.pid, 3);
    const exited = (p: (typeof victims)[number]) => () => p.exitCode !== null || p.signalCode !== null;
    await rounds;
    expect(await waitFor(exited(victims[0]!), 2000)).toBe(true);
    expect(await waitFor(exited(victims[1]!), 2000)).toBe(true);
    expect(exited(monitor)()).toBe(false);
    monitor.kill("SIGKILL");
  });
});
