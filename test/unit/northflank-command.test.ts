/**
 * The northflank provider's direct exec (providers/northflank/command.ts),
 * run by the host's own /bin/sh as an instance would run it: exactly the
 * request's environment and cwd, values never on the command line, and the
 * first command's network check, which lets the job run only where the
 * only interface is lo (here: a fresh network namespace, `unshare --net`)
 * and otherwise stops before anything of the job runs (here: the host's
 * namespace, when it has any interface but lo, as /proc/net/dev says).
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { NOT_ISOLATED_MARK, NOT_ISOLATED_STATUS, directExec } from "../../providers/northflank/command.js";
import { requireCommand } from "../support/harness.js";

function run(argv: string[], script: Buffer, prefix: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const [cmd, ...args] = [...prefix, ...argv];
  const r = spawnSync(cmd!, args, { input: script, encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const req = { argv: ["/bin/sh", "-c", 'echo "$SECRET|$PWD|$(pwd)"; env | sort'], env: { PATH: "/usr/bin:/bin", SECRET: "s3cr3t 'q' $x" }, cwd: "/tmp" };
const hostInterfaces = readFileSync("/proc/net/dev", "utf8")
  .split("\n")
  .filter((l) => l.includes(":"))
  .map((l) => l.split(":")[0]!.trim());

describe("northflank direct exec", () => {
  it("runs argv with exactly the request's environment and cwd; values stay off the command line", () => {
    const { argv, script } = directExec(req, false);
    expect(argv.join(" ")).not.toContain("s3cr3t");
    const r = run(argv, script);
    expect(r.status).toBe(0);
    // PWD is the job's own shell's (sh exports it), as under every provider.
    expect(r.stdout).toBe("s3cr3t 'q' $x|/tmp|/tmp\nPATH=/usr/bin:/bin\nPWD=/tmp\nSECRET=s3cr3t 'q' $x\n");
  });

  it("a missing cwd fails as sh's cd does (126), the job not run", () => {
    const { argv, script } = directExec({ ...req, cwd: "/no/such/dir" }, false);
    const r = run(argv, script);
    expect(r.status).toBe(126);
    expect(r.stdout).toBe("");
  });

  it("the network check lets the job run where lo is the only interface", () => {
    requireCommand("unshare", "util-linux");
    const { argv, script } = directExec(req, true);
    const r = run(argv, script, ["unshare", "--net"]);
    expect(r.status).toBe(0);
    expect(r.stdout.startsWith("s3cr3t 'q' $x|/tmp|/tmp\n")).toBe(true);
  });

  it("and stops before the job where another interface exists (this host's namespace)", () => {
    const { argv, script } = directExec(req, true);
    const r = run(argv, script);
    if (hostInterfaces.some((n) => n !== "lo")) {
      expect(r.status).toBe(NOT_ISOLATED_STATUS);
      expect(r.stderr).toBe(NOT_ISOLATED_MARK);
      expect(r.stdout).toBe("");
    } else {
      // A host with only lo: the check passes, as it must.
      expect(r.status).toBe(0);
    }
  });
});
