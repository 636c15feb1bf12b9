/**
 * The exec shim of the remote providers, run by the host's python3 directly:
 * bytes survive its base64 lines, limits kill the whole session, and the
 * status line carries exit code, signal and limit.
 */
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { decodeShimOutput, shimArgv } from "../../providers/remote/exec-shim.js";

function shim(argv: string[], opts: { cap?: number; timeoutMs?: number; cwd?: string; env?: Record<string, string> } = {}) {
  const [cmd, ...args] = shimArgv({ argv, env: opts.env ?? { PATH: "/usr/bin:/bin" }, cwd: opts.cwd ?? "/tmp", timeoutMs: opts.timeoutMs ?? 10_000 }, opts.cap ?? 1000);
  const t0 = Date.now();
  const r = spawnSync(cmd!, args, { env: { PATH: process.env.PATH, WORKER_SECRET: "x" } });
  // Line-split as microsandbox does: the decoder must not need the newlines.
  const lines = (s: Buffer) => s.toString().split("\n").join("\n");
  return { ms: Date.now() - t0, ...decodeShimOutput({ stdout: lines(r.stdout), stderr: lines(r.stderr), exitCode: r.status }) };
}

describe("remote exec shim", { timeout: 30_000 }, () => {
  it("returns both streams byte for byte and the exit code", () => {
    const r = shim(["/bin/sh", "-c", "printf 'a\\377\\000b'; printf 'e\\200' >&2; exit 3"]);
    expect(r.status).toEqual({ code: 3, signal: null, limit: null });
    expect(r.stdout.equals(Buffer.from([0x61, 0xff, 0x00, 0x62]))).toBe(true);
    expect(r.stderr.equals(Buffer.from([0x65, 0x80]))).toBe(true);
  });

  it("sets exactly the given env and cwd", () => {
    const r = shim(["env"], { env: { A: "1 2", PATH: "/bin" }, cwd: "/usr" });
    expect(r.stdout.toString().trim().split("\n").sort()).toEqual(["A=1 2", "PATH=/bin"]);
    const pwd = shim(["/bin/pwd"], { cwd: "/usr" });
    expect(pwd.stdout.toString()).toBe("/usr\n");
    const missing = shim(["/bin/pwd"], { cwd: "/no/such/dir" });
    expect(missing.status?.code).toBe(126);
  });

  it("keeps cap+1 bytes of a stream past its cap and kills the command", () => {
    const r = shim(["/bin/sh", "-c", "yes"], { cap: 1000 });
    expect(r.status).toMatchObject({ limit: "output", signal: "SIGKILL" });
    expect(r.stdout.length).toBe(1001);
  });

  it("kills the whole session at the deadline, keeping what was written", () => {
    const r = shim(["/bin/sh", "-c", "echo started; sleep 30 & sleep 30"], { timeoutMs: 500 });
    expect(r.status).toMatchObject({ limit: "timeout", signal: "SIGKILL" });
    expect(r.stdout.toString()).toBe("started\n");
    expect(r.ms).toBeLessThan(5000);
  });

  it("a missing program is 127 with the shell's message", () => {
    const r = shim(["no-such-program-here"]);
    expect(r.status?.code).toBe(127);
    expect(r.stderr.toString()).toMatch(/no-such-program-here: not found/);
  });
});

describe("remote exec shim: network", { timeout: 30_000 }, () => {
  it("runs the command with loopback only (up), whatever the host has", () => {
    const r = shim([
      "python3",
      "-c",
      "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))\ns=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); c=socket.create_connection(s.getsockname(), timeout=2); print('lo up')",
    ]);
    expect(r.status).toMatchObject({ code: 0 });
    expect(r.stdout.toString()).toBe("['lo']\nlo up\n");
  });
});
