/**
 * The docker provider's launcher protocol without an engine: the request
 * script (run by the host's dash exactly as the launcher evals it) and the
 * trailer scanner across arbitrary chunk boundaries.
 */
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { TrailerScanner, encodeRequest, newTag, requestScript } from "../../providers/docker/launcher.js";

/** Evals the request in a fresh `env -i` dash, as the launcher does. */
function runRequest(req: Parameters<typeof requestScript>[0]): { stdout: string; status: number | null } {
  const r = spawnSync("/usr/bin/env", ["-i", "/bin/sh", "-c", 'eval "$(cat)"'], { input: requestScript(req), encoding: "utf8" });
  return { stdout: r.stdout, status: r.status };
}

describe("docker launcher: request script", () => {
  it("sets exactly the request's environment, cwd and argv (quotes, spaces, globs, '=' in argv[0])", () => {
    const env = { PATH: "/usr/bin:/bin", Q: "it's \"quoted\" $HOME `x` *", EMPTY: "", NL: "a\nb" };
    const r = runRequest({ argv: ["/usr/bin/env", "-0"], env, cwd: "/tmp" });
    expect(r.status).toBe(0);
    const seen = r.stdout.split("\0").filter((l) => l !== "").sort();
    expect(seen).toEqual(Object.entries(env).map(([k, v]) => `${k}=${v}`).sort());
    const args = runRequest({ argv: ["/bin/sh", "-c", 'pwd; printf "%s|" "$@"', "sh", "a b", "$HOME", "*", "'"], env: {}, cwd: "/tmp" });
    expect(args.stdout).toBe("/tmp\na b|$HOME|*|'|");
    // env would take "A=B" for an assignment: such an argv[0] still runs as a command.
    expect(runRequest({ argv: ["A=B"], env: { PATH: "/usr/bin:/bin" }, cwd: "/" }).status).toBe(127);
  });

  it("starts the job with default signal dispositions and reports a missing cwd", () => {
    const r = runRequest({ argv: ["/bin/sh", "-c", "grep SigIgn /proc/self/status"], env: {}, cwd: "/" });
    expect(r.stdout).toMatch(/^SigIgn:\s+0+\n$/);
    expect(runRequest({ argv: ["true"], env: {}, cwd: "/no/such/dir" }).status).toBe(126);
  });

  it("refuses what a shell cannot carry: non-identifier names, NUL bytes", () => {
    expect(() => requestScript({ argv: ["true"], env: { "A-B": "x" } })).toThrow(/shell identifier/);
    expect(() => requestScript({ argv: ["true"], env: { A: "x\u0000y" } })).toThrow(/NUL/);
    expect(() => requestScript({ argv: [], env: {} })).toThrow(/empty argv/);
  });

  it("frames the request as a header line with its byte length", () => {
    const tag = newTag();
    const buf = encodeRequest({ argv: ["echo", "é"], env: {} }, tag);
    const nl = buf.indexOf("\n");
    const [len, t] = buf.subarray(0, nl).toString().split(" ");
    expect(t).toBe(tag);
    expect(Number(len)).toBe(buf.length - nl - 1);
  });
});

describe("docker launcher: trailer scanner", () => {
  const tag = newTag();
  const stream = Buffer.concat([Buffer.from("job output, even "), Buffer.from(tag.slice(0, 10)), Buffer.from(" a partial tag\n"), Buffer.from(`${tag}137\n`), Buffer.from("late bytes of a killed leftover")]);

  it("splits job output from the trailer at any chunk boundary and drops what follows", () => {
    for (const step of [1, 2, 7, tag.length - 1, tag.length, stream.length]) {
      const got: Buffer[] = [];
      const s = new TrailerScanner(tag, (b) => got.push(b));
      for (let i = 0; i < stream.length; i += step) s.push(stream.subarray(i, i + step));
      s.flush();
      expect(s.status).toBe(137);
      expect(Buffer.concat(got).toString()).toBe(`job output, even ${tag.slice(0, 10)} a partial tag\n`);
    }
  });

  it("without a trailer everything held back is output", () => {
    const got: Buffer[] = [];
    const s = new TrailerScanner(tag, (b) => got.push(b));
    s.push(Buffer.from("short"));
    expect(Buffer.concat(got).length).toBe(0);
    s.flush();
    expect(s.done).toBe(false);
    expect(Buffer.concat(got).toString()).toBe("short");
  });
});
