/**
 * One local sandbox: a host workspace directory plus a cgroup; every exec is
 * a fresh bwrap process tree placed in that cgroup before it can fork.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdirSync, rmdirSync, unlinkSync } from "node:fs";
import { rm } from "node:fs/promises";
import type { Readable, Writable } from "node:stream";
import { performance } from "node:perf_hooks";
import type { ExecLimitHit, ExecRequest, ExecResult, Sandbox } from "../provider.js";
import { extractTar, packDir, type ArchiveLimits, type PackOptions } from "../archive/index.js";
import { ErrorCodes, ProviderError, isSandqueueError } from "../../errors/index.js";
import { buildBwrapArgs } from "./bwrap-args.js";
import type { CgroupWrite, SandboxCgroup } from "./cgroups.js";
import { CappedCapture } from "./output-capture.js";
import { hostDirFor } from "./workspace-path.js";
import { seccompProgram } from "./seccomp.js";
import { isListed, killAllExcept, waitFor } from "./sandbox-kill.js";
import { closeInheritedPrefix, inheritedFds } from "./inherited-fds.js";

/**
 * bwrap reads its arguments from this fd (`--args`) and the seccomp program
 * from the next one: nothing of the request (environment, secrets, code)
 * appears on a command line, which any host user can read with `ps`.
 */
const ARGS_FD = 3;
const SECCOMP_FD = 4;

/** How often the memory cgroup's OOM-kill counter is read while an exec runs. */
const OOM_POLL_MS = 200;

/** Order in which simultaneous limit hits are reported. */
const LIMIT_PRIORITY: readonly ExecLimitHit[] = ["aborted", "timeout", "output", "memory", "pids"];

/**
 * Printed on stderr (with exit 125) by the wrapper when it cannot set up or
 * join the cgroup; bwrap then never runs. The per-exec nonce makes it
 * unforgeable by job code, which never sees the wrapper's command line.
 */
const CGROUP_JOIN_FAILED = "sandqueue: cgroup join failed";

/**
 * `sh -c` wrapper: sets the leaf's limits, joins it with its own pid, then
 * execs bwrap, so bwrap and everything it forks start inside the limits.
 * File names travel as positional parameters (never parsed as shell);
 * values are digits or `$$`. Cost: one small exec.
 */
function wrapperScript(writes: readonly CgroupWrite[], failMarker: string): string {
  const steps = writes.map((w, i) => {
    if (!/^(\d+|\$\$)$/.test(w.value)) throw new Error(`unexpected cgroup value ${w.value}`);
    const echo = `echo ${w.value} > "\${${i + 1}}"`;
    return w.optional ? `{ ${echo} || :; }` : echo;
  });
  return `{ ${steps.join(" && ")}; } 2>/dev/null || { echo '${failMarker}' >&2; exit 125; }; shift ${writes.length}; exec "$@"`;
}

export interface LocalSandboxContext {
  id: string;
  /** Host directory owning everything of the sandbox (workspace, marker). */
  sandboxDir: string;
  workspaceHostDir: string;
  rootOps: readonly string[];
  cgroup: SandboxCgroup;
  bwrapPath: string;
  uid: number;
  gid: number;
  tmpSizeBytes: number | undefined;
  archiveLimits: ArchiveLimits;
  onReleased: () => void;
}

export class LocalSandbox implements Sandbox {
  readonly id: string;
  private running: { kill: (why: ExecLimitHit) => void } | null = null;
  private releasing: Promise<void> | null = null;
  private readonly leafRemovals = new Set<Promise<void>>();

  constructor(private readonly ctx: LocalSandboxContext) {
    this.id = ctx.id;
  }

  get released(): boolean {
    return this.releasing !== null;
  }

  private assertLive(): void {
    if (this.releasing) {
      throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released`, { retryable: false });
    }
  }

  async exec(req: ExecRequest): Promise<ExecResult> {
    this.assertLive();
    if (this.running) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id} is already running an exec`, { retryable: false });
    }
    const { ctx } = this;
    const args = buildBwrapArgs({
      rootOps: ctx.rootOps,
      workspaceHostDir: ctx.workspaceHostDir,
      argv: req.argv,
      env: req.env,
      cwd: req.cwd,
      uid: ctx.uid,
      gid: ctx.gid,
      tmpSizeBytes: ctx.tmpSizeBytes,
      seccompFd: SECCOMP_FD,
    });
    // Options (environment and secrets included) go through ARGS_FD; only
    // "--" and the command stay on the command line (bwrap takes the command there).
    const optionsEnd = args.length - req.argv.length - 1;
    if (args[optionsEnd] !== "--") throw new ProviderError(ErrorCodes.PROVIDER_FAILED, "unexpected bwrap argument layout", { retryable: false });
    const started = performance.now();
    if (req.signal?.aborted) {
      return {
        exitCode: null, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0),
        stdoutTruncated: false, stderrTruncated: false, limitHit: "aborted", durationMs: 0,
      };
    }
    // A fresh leaf cgroup per exec: its counters start at zero and no exited
    // task of an earlier exec still counts against its pids limit.
    // Busy from here on (archive calls and a second exec are refused); a kill
    // requested before the process exists is replayed once it does.
    let earlyKill: ExecLimitHit | null = null;
    this.running = { kill: (why) => (earlyKill ??= why) };
    let cg;
    try {
      cg = await ctx.cgroup.newExec();
    } catch (err) {
      this.running = null;
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: could not create the exec cgroup: ${(err as Error).message}`, {
        retryable: true,
        cause: err,
      });
    }
    if (this.releasing) {
      // Released while the leaf was being made: run nothing, leave nothing.
      this.running = null;
      await cg.remove().catch(() => undefined);
      this.assertLive();
    }
    const hits = new Set<ExecLimitHit>();
    const writes = cg.joinWrites;
    const failMarker = `${CGROUP_JOIN_FAILED} ${randomBytes(8).toString("hex")}`;
    let child: ChildProcess;
    try {
      // fds the worker inherited without close-on-exec must not reach the sandbox (inherited-fds.ts).
      const { shell, prefix } = closeInheritedPrefix(inheritedFds(), [ARGS_FD, SECCOMP_FD]);
      child = spawn(shell, ["-c", prefix + wrapperScript(writes, failMarker), "sandqueue-wrap", ...writes.map((w) => w.file), ctx.bwrapPath, "--args", String(ARGS_FD), ...args.slice(optionsEnd)], {
        // The wrapper and bwrap get an empty environment too; bwrap --clearenv
        // then sets only the request's variables.
        env: {},
        stdio: [req.stdin === undefined ? "ignore" : "pipe", "pipe", "pipe", "pipe", "pipe"],
      });
      // NUL-terminated arguments, then the compiled filter: a few KiB at most.
      for (const [fd, data] of [[ARGS_FD, Buffer.from(args.slice(0, optionsEnd).map((a) => `${a}\0`).join(""))], [SECCOMP_FD, seccompProgram()]] as const) {
        const w = child.stdio[fd] as Writable;
        w.on("error", () => undefined);
        w.end(data);
      }
    } catch (err) {
      this.running = null;
      await cg.remove().catch(() => undefined);
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: could not spawn bwrap: ${(err as Error).message}`, {
        retryable: true,
        cause: err,
      });
    }

    let killed = false;
    // Cgroup sweeps started from event handlers; awaited before exec returns so
    // a late sweep can never hit the next exec's processes.
    const sweeps: Promise<void>[] = [];
    const sweep = (): void => void sweeps.push(cg.killAll().catch(() => undefined));
    const procsFile = writes.filter((w) => w.file.endsWith("cgroup.procs")).at(-1)?.file;
    const exited = (): boolean => child.exitCode !== null || child.signalCode !== null;
    const kill = (why: ExecLimitHit): void => {
      hits.add(why);
      if (killed) return;
      killed = true;
      if (!procsFile) {
        child.kill("SIGKILL");
        sweep();
        return;
      }
      // Everything but bwrap's monitor first: the monitor then reaps the
      // namespace's init itself and exits (no orphaned zombie, see
      // sandbox-kill.ts). Killed directly when it has not joined the cgroup
      // yet (bwrap not started) or lingers; the sweep catches the rest.
      sweeps.push(
        (async () => {
          if (await isListed(procsFile, child.pid)) {
            await killAllExcept(procsFile, child.pid);
            if (!(await waitFor(exited, 500))) child.kill("SIGKILL");
          } else {
            child.kill("SIGKILL");
          }
          await cg.killAll();
        })().catch(() => undefined),
      );
    };
    this.running = { kill };
    if (earlyKill) kill(earlyKill);

    const stdout = new CappedCapture(child.stdout!, req.maxOutputBytes, () => kill("output"));
    const stderr = new CappedCapture(child.stderr!, req.maxOutputBytes, () => kill("output"));

    if (req.stdin !== undefined && child.stdin) {
      // EPIPE when the program exits without reading its input is not an error.
      child.stdin.on("error", () => undefined);
      child.stdin.end(req.stdin);
    }

    const timer = setTimeout(() => kill("timeout"), req.timeoutMs);
    // cgroup v1 has no memory.oom.group: the first OOM kill ends the whole
    // exec, as on v2, instead of leaving survivors to run into the timeout.
    const oomPoll = setInterval(() => {
      void cg.counters().then((c) => (c.oomKills > 0 ? kill("memory") : undefined), () => undefined);
    }, OOM_POLL_MS);
    const onAbort = (): void => kill("aborted");
    req.signal?.addEventListener("abort", onAbort, { once: true });

    try {
      const [exitCode, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
        child.once("error", reject);
        child.once("close", (code, sig) => resolve([code, sig]));
      });
      await Promise.all([stdout.done, stderr.done]);
      if (exitCode === 125 && stderr.bytes.toString().trim() === failMarker) {
        throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: could not place the process in its cgroup`, {
          retryable: true,
        });
      }
      // bwrap exits only after the namespace's init, and the kernel kills every
      // process of a pid namespace whose init dies: nothing of the job is left
      // (the leaf removal below sweeps the cgroup once more anyway).
      await Promise.all(sweeps);
      const after = await cg.counters();
      if (after.oomKills > 0) hits.add("memory");
      if (after.pidsMaxHits > 0) hits.add("pids");
      if (this.releasing && killed) hits.add("aborted");
      return {
        // A sandbox the provider killed reports the kill, whatever bwrap's own exit status.
        exitCode: killed ? null : exitCode,
        signal: killed ? "SIGKILL" : signal,
        stdout: stdout.bytes,
        stderr: stderr.bytes,
        stdoutTruncated: stdout.truncated,
        stderrTruncated: stderr.truncated,
        limitHit: LIMIT_PRIORITY.find((l) => hits.has(l)) ?? null,
        durationMs: Math.round(performance.now() - started),
      };
    } catch (err) {
      kill("aborted");
      if (isSandqueueError(err)) throw err;
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: could not run bwrap: ${(err as Error).message}`, {
        retryable: true,
        cause: err,
      });
    } finally {
      await Promise.all(sweeps);
      // Off the result's path; release() waits for it.
      const removal = cg.remove().catch(() => undefined);
      this.leafRemovals.add(removal);
      void removal.then(() => this.leafRemovals.delete(removal));
      clearTimeout(timer);
      clearInterval(oomPoll);
      req.signal?.removeEventListener("abort", onAbort);
      this.running = null;
    }
  }

  /**
   * Archive transfer touches the host directory directly. Refused while an
   * exec runs: with no sandbox process alive (each exec ends with its cgroup
   * emptied) nothing can swap a checked directory for a symlink meanwhile.
   */
  private assertIdle(op: string): void {
    this.assertLive();
    if (this.running) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: ${op} while an exec is running`, { retryable: false });
    }
  }

  async putArchive(dir: string, tar: Readable): Promise<void> {
    this.assertIdle("putArchive");
    const hostDir = await hostDirFor(this.ctx.workspaceHostDir, dir, true);
    await extractTar(hostDir, tar, this.ctx.archiveLimits);
  }

  async getArchive(dir: string, opts?: PackOptions): Promise<Readable> {
    this.assertIdle("getArchive");
    const hostDir = await hostDirFor(this.ctx.workspaceHostDir, dir, false);
    return packDir(hostDir, opts);
  }

  release(): Promise<void> {
    this.releasing ??= this.doRelease();
    return this.releasing;
  }

  /** Every step runs even when an earlier one fails; the first failure is reported. */
  private async doRelease(): Promise<void> {
    this.running?.kill("aborted");
    const steps = [
      () => Promise.all(this.leafRemovals),
      () => this.ctx.cgroup.remove(),
      // fs.rm does not follow symlinks planted in the workspace: it unlinks them.
      () => removeSandboxDir(this.ctx.sandboxDir, this.ctx.workspaceHostDir),
    ];
    let firstError: unknown;
    for (const step of steps) {
      try {
        await step();
      } catch (err) {
        firstError ??= err;
      }
    }
    this.ctx.onReleased();
    if (firstError !== undefined) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: release incomplete: ${(firstError as Error).message}`, {
        retryable: true,
        cause: firstError,
      });
    }
  }
}

/**
 * Removes a sandbox directory. A job that left its workspace empty (the
 * common case for one-shot jobs) costs three synchronous unlink/rmdir calls;
 * anything else goes through the asynchronous recursive rm, which never
 * follows symlinks and never blocks the event loop on a large tree.
 */
async function removeSandboxDir(sandboxDir: string, workspaceHostDir: string): Promise<void> {
  try {
    if (readdirSync(workspaceHostDir).length === 0) {
      rmdirSync(workspaceHostDir);
      unlinkSync(`${sandboxDir}/owner.json`);
      rmdirSync(sandboxDir);
      return;
    }
  } catch {
    // fall through to the general path
  }
  await rm(sandboxDir, { recursive: true, force: true, maxRetries: 3 });
}
