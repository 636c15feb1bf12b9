/**
 * The attached-instance cleaning (providers/northflank/instance-clean.ts),
 * run by /bin/sh in a fresh PID namespace laid out as a container runtime
 * lays out an instance: PID 1 the service's command, a session leader, with
 * a child of its own; a job's exec session in a session of its own leaving
 * a background child, a `setsid` daemon and an orphan reparented to PID 1;
 * the cleaning in an exec session of its own.
 */
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { CLEAN_INSTANCE, KILL_JOB_PROCESSES } from "../../providers/northflank/instance-clean.js";
import { requireCommand } from "../support/harness.js";

// Runs as PID 1. Sleeps are told apart by their durations (300: the service's, 301-303: the job's).
const INSTANCE = [
  "sleep 300 &",
  `setsid sh -c 'sleep 301 & setsid sleep 302 & (sleep 303 &); sleep 304' &`,
  // Until the job's processes all exist.
  "i=0; while [ $i -lt 100 ]; do n=0; for d in /proc/[0-9]*; do read -r c < $d/cmdline 2>/dev/null; case $c in sleep30[1-4]) n=$((n+1));; esac; done 2>/dev/null; [ $n -ge 4 ] && break; sleep 0.05; i=$((i+1)); done",
  'setsid sh -c "$1"; echo "clean exit $?"',
  // What is left, as argv with spaces.
  "for d in /proc/[0-9]*; do tr '\\0' ' ' < $d/cmdline; echo; done 2>/dev/null | grep '^sleep' | sort",
].join("\n");

function runInstance(script: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("unshare", ["--pid", "--fork", "--mount-proc", "setsid", "/bin/sh", "-c", INSTANCE, "instance", script], { encoding: "utf8", timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("northflank attached-instance cleaning", () => {
  it("kills what a job left (background, setsid daemon, orphan) and spares the service's own processes", () => {
    requireCommand("unshare", "util-linux");
    const r = runInstance(KILL_JOB_PROCESSES);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("clean exit 0\nsleep 300 \n");
  });

  it("without it, all of the job's processes are still there (the setting the test above cleans)", () => {
    requireCommand("unshare", "util-linux");
    const r = runInstance("true");
    expect(r.stdout).toBe("clean exit 0\nsleep 300 \nsleep 301 \nsleep 302 \nsleep 303 \nsleep 304 \n");
  });

  it("the cleaning script is the kill, then the workspace", () => {
    expect(CLEAN_INSTANCE.startsWith(`${KILL_JOB_PROCESSES}\n`)).toBe(true);
    expect(CLEAN_INSTANCE).toContain("find /workspace -mindepth 1 -delete");
  });
});
