/**
 * The command string Superserve and E2B execs send (providers/superserve/
 * command.ts, providers/e2b/command.ts), run by the shells those services
 * run it with: Superserve's `/bin/sh -c STRING`, envd's `/bin/bash -l -c
 * STRING`, each started with an environment of its own that the job must
 * never see.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { ExecRequest } from "../../providers/provider.js";
import { commandString } from "../../providers/superserve/command.js";
import { e2bCommand } from "../../providers/e2b/command.js";

type Req = Pick<ExecRequest, "argv" | "env" | "cwd" | "stdin">;
const PATH_ENV = { PATH: "/usr/bin:/bin" };
// What a sandbox's own environment holds (the service adds the request's to it; the job must see neither this nor the service's).
const serviceEnv = { PATH: "/usr/local/bin:/usr/bin:/bin", HOME: mkdtempSync(path.join(os.tmpdir(), "sq-cmd-home-")), SANDBOX_TOKEN: "service-only", OLDPWD: "/var" };

const shells = {
  superserve: (req: Req) => ["/bin/sh", "-c", commandString(req)],
  e2b: (req: Req) => ["/bin/bash", "-l", "-c", e2bCommand(req)],
};

function run(argv: string[], input?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { env: serviceEnv, cwd: "/", input, encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.each(Object.entries(shells))("%s command string", (_name, shell) => {
  it("runs argv with exactly the request's environment (PWD the cwd's), in the cwd", () => {
    const r = run(shell({ argv: ["/bin/sh", "-c", 'printf "%s|" "$0" "$@" "$(pwd)"; echo; env | sort', "zero", "a b", "it's", "$HOME", "*"], env: { ...PATH_ENV, JOB: "x=y 'q' $z" }, cwd: "/tmp" }));
    expect(r).toMatchObject({ status: 0, stdout: "zero|a b|it's|$HOME|*|/tmp|\nJOB=x=y 'q' $z\nPATH=/usr/bin:/bin\nPWD=/tmp\n" });
  });

  it("gives OLDPWD and PWD only as the request has them", () => {
    const r = run(shell({ argv: ["env"], env: { PWD: "/elsewhere", OLDPWD: "/before" }, cwd: "/tmp" }));
    expect(r.stdout.split("\n").sort()).toEqual(["", "OLDPWD=/before", "PWD=/elsewhere"]);
  });

  it("a missing cwd fails as sh's cd does (126), the job not run", () => {
    const r = run(shell({ argv: ["/bin/sh", "-c", "echo ran"], env: PATH_ENV, cwd: "/no/such/dir" }));
    expect(r.status).toBe(126);
    expect(r.stdout).toBe("");
  });

  it("runs a program whose name has '=' or starts with '-' as that program, not as a variable or an option", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "sq-cmd-prog-"));
    for (const name of ["a=b", "-x"]) {
      spawnSync("/bin/sh", ["-c", `printf '#!/bin/sh\\necho "ran $0 $*"\\n' > "$1" && chmod +x "$1"`, "mk", path.join(dir, name)]);
      const r = run(shell({ argv: [`./${name}`, "arg"], env: PATH_ENV, cwd: dir }));
      expect(r).toMatchObject({ status: 0, stdout: `ran ./${name} arg\n` });
    }
  });

  it("a missing program exits 127", () => {
    expect(run(shell({ argv: ["no-such-program-here"], env: PATH_ENV, cwd: "/" })).status).toBe(127);
  });
});

describe("stdin", () => {
  it("superserve's is /dev/null; e2b's is the pipe envd gives when the request has stdin", () => {
    expect(run(shell("superserve"), "fed").stdout).toBe("");
    expect(run(["/bin/bash", "-l", "-c", e2bCommand({ argv: ["cat"], env: PATH_ENV, cwd: "/", stdin: Buffer.from("fed") })], "fed").stdout).toBe("fed");
    expect(run(shell("e2b"), "fed").stdout).toBe("");
  });
});

function shell(name: keyof typeof shells): string[] {
  return shells[name]({ argv: ["cat"], env: PATH_ENV, cwd: "/" });
}

describe("validation", () => {
  it("refuses what the request script refuses (NUL bytes, bad names, relative cwd)", () => {
    expect(() => commandString({ argv: ["a\0b"], env: {} })).toThrow(/NUL/);
    expect(() => commandString({ argv: ["true"], env: { "BAD-NAME": "x" } })).toThrow(/not a shell identifier/);
    expect(() => commandString({ argv: ["true"], env: {}, cwd: "rel" })).toThrow(/absolute/);
  });
});
