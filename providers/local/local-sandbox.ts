/**
 * One local sandbox: a host workspace directory plus a cgroup. Every exec is
 * a fresh bwrap process tree in a fresh leaf cgroup, started by the spawn
 * helper (spawner.ts) with a launcher that waits for the request
 * (launch-request.ts). A sandbox from the pre-start pool has that bwrap
 * running already, so its exec skips bwrap's namespace and mount setup.
 */
import { constants as fsConstants, openSync, unlinkSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import net from "node:net";
import os, { constants as osConstants } from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { performance } from "node:perf_hooks";
import { EGRESS_SOCKET, type ExecLimitHit, type ExecRequest, type ExecResult, type Sandbox, type SandboxEgress } from "../provider.js";
import { extractTar, packDir, type ArchiveLimits, type PackOptions } from "../archive/index.js";
import { ErrorCodes, ProviderError, isSandqueueError } from "../../errors/index.js";
import { destroyOnAbort, throwIfTransferAborted, transferAborted } from "../abort.js";
import { buildBwrapArgs } from "./bwrap-args.js";
import { readProcs, type CgroupLimits, type ExecCgroup, type SandboxCgroup } from "./cgroups.js";
import { ExecSupervision, notRunResult } from "../exec-supervision.js";
import { hostDirFor } from "./workspace-path.js";
import { isListed, killAllExcept, waitFor } from "./sandbox-kill.js";
import { removeSandboxDir } from "./remove-tree.js";
import { LAUNCHER_ARGV, REQUEST_FD, launchScript } from "./launch-request.js";
import type { Spawner, SpawnedProcess } from "./spawner.js";
import { EGRESS_PROXY_URL, EGRESS_SANDBOX_DIR, startBridge, stopBridge } from "./egress-bridge.js";

/**
 * Niceness of pre-started sandboxes until a job adopts one: the pool's bwrap
 * setup (~10 ms of CPU) then yields to running jobs and fills idle time.
 */
const POOL_NICE = 10;

/** bwrap reads the seccomp program from this fd. */
const SECCOMP_FD = 4;


const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(Object.entries(osConstants.signals).map(([name, n]) => [n, name as NodeJS.Signals]));

/** Opens one end of a FIFO without blocking, as a stream the event loop polls (no thread-pool reads). */
function fifoSocket(file: string, mode: "read" | "write"): net.Socket {
  const flags = (mode === "read" ? fsConstants.O_RDONLY : fsConstants.O_WRONLY) | fsConstants.O_NONBLOCK;
  const sock = new net.Socket({ fd: openSync(file, flags), readable: mode === "read", writable: mode === "write" });
  sock.on("error", () => undefined); // EPIPE when the program exits without reading its input is not an error
  return sock;
}

export interface LocalSandboxContext {
  id: string;
  /** Host directory owning everything of the sandbox (workspace, marker, FIFOs). */
  sandboxDir: string;
  workspaceHostDir: string;
  rootOps: readonly string[];
  cgroup: SandboxCgroup;
  spawner: Spawner;
  /** The provider's compiled seccomp program (written once). */
  seccompFile: string;
  bwrapPath: string;
  uid: number;
  gid: number;
  tmpSizeBytes: number | undefined;
  archiveLimits: ArchiveLimits;
  /** `network: "proxy"`: the host directory of its way out (egress-bridge.ts). */
  egressHostDir?: string;
  onReleased: () => void;
}

/** A bwrap started ahead of its request: the launcher blocks on the request FIFO. */
interface Launched {
  proc: SpawnedProcess;
  cg: ExecCgroup;
  fifos: { stdin: string; stdout: string; stderr: string; request: string };
  procsFile: string | undefined;
  /** The bridge to the egress proxy inside this bwrap's network namespace (`network: "proxy"`). */
  bridge?: SpawnedProcess;
}

export class LocalSandbox implements Sandbox {
  readonly id: string;
  readonly egress?: SandboxEgress;
  private running: { kill: (why: ExecLimitHit) => void } | null = null;
  private releasing: Promise<void> | null = null;
  private readonly leafRemovals = new Set<Promise<void>>();
  private launched: Launched | null = null;
  /** Settles when the latest exec has ended, whatever its outcome. */
  private execEnded: Promise<void> | null = null;
  private launches = 0;

  constructor(private readonly ctx: LocalSandboxContext) {
    this.id = ctx.id;
    if (ctx.egressHostDir) this.egress = { hostDir: ctx.egressHostDir, sandboxDir: EGRESS_SANDBOX_DIR, proxyUrl: EGRESS_PROXY_URL };
  }

  get released(): boolean {
    return this.releasing !== null;
  }

  private assertLive(): void {
    if (this.releasing) {
      throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released`, { retryable: false });
    }
  }

  /**
   * Starts the bwrap of the next exec now (pre-start pool). Its launcher
   * runs nothing of a job until exec() writes the request.
   */
  async prestart(): Promise<void> {
    this.assertLive();
    if (this.launched || this.running) return;
    const launched = await this.launch(POOL_NICE);
    if (this.releasing) return void (await this.discard(launched));
    this.launched = launched;
  }

  /** The job's limits and labels for a pre-started sandbox handed out by the pool. */
  adopt(limits: CgroupLimits, owner: string): void {
    this.ctx.cgroup.setLimits(limits);
    if (this.launched?.procsFile) resetNiceness(this.launched.procsFile);
    writeFileSync(path.join(this.ctx.sandboxDir, "owner.json"), owner);
  }

  private async launch(nice = 0): Promise<Launched> {
    const { ctx } = this;
    let cg: ExecCgroup;
    try {
      // A fresh cgroup per exec: its counters start at zero and no exited
      // task of an earlier exec still counts against its pids limit.
      cg = await ctx.cgroup.newExec();
    } catch (err) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: could not create the exec cgroup: ${(err as Error).message}`, {
        retryable: true,
        cause: err,
      });
    }
    try {
      const n = ++this.launches;
      const f = (name: string) => path.join(ctx.sandboxDir, `x${n}.${name}`);
      const fifos = { stdin: f("in"), stdout: f("out"), stderr: f("err"), request: f("req") };
      const args = buildBwrapArgs({
        rootOps: ctx.rootOps,
        workspaceHostDir: ctx.workspaceHostDir,
        argv: LAUNCHER_ARGV,
        cwd: "/",
        uid: ctx.uid,
        gid: ctx.gid,
        tmpSizeBytes: ctx.tmpSizeBytes,
        seccompFd: SECCOMP_FD,
        ...(ctx.egressHostDir ? { egress: { hostDir: ctx.egressHostDir, sandboxDir: EGRESS_SANDBOX_DIR } } : {}),
      });
      // Nothing of a request is in these arguments: environment and command come through the request FIFO.
      const proc = await ctx.spawner.start({
        argv: [ctx.bwrapPath, ...args],
        cgroup: cg.join,
        nice,
        mkfifo: [fifos.stdin, fifos.stdout, fifos.stderr, fifos.request],
        fds: [
          [0, fifos.stdin, "r"],
          [1, fifos.stdout, "rw"],
          [2, fifos.stderr, "rw"],
          [SECCOMP_FD, ctx.seccompFile, "r"],
          [REQUEST_FD, fifos.request, "rw"],
        ],
      });
      const launched: Launched = { proc, cg, fifos, procsFile: cg.join.procs.at(-1) };
      if (ctx.egressHostDir) {
        try {
          // Before the request is written: the job's first connection finds the bridge listening.
          launched.bridge = await startBridge(ctx.spawner, {
            bwrapPid: proc.pid,
            procsFile: launched.procsFile,
            socketPath: path.join(ctx.egressHostDir, EGRESS_SOCKET),
            statusFifo: f("bridge"),
          });
        } catch (err) {
          await this.discard(launched);
          throw err;
        }
      }
      return launched;
    } catch (err) {
      await cg.remove().catch(() => undefined);
      if (isSandqueueError(err)) throw err;
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: could not start bwrap: ${(err as Error).message}`, {
        retryable: true,
        cause: err,
      });
    }
  }

  /** Kills a launched bwrap that will not run anything and removes its traces. */
  private async discard(l: Launched): Promise<void> {
    if (l.bridge) await stopBridge(l.bridge);
    await l.cg.killAll().catch(() => undefined);
    if (!(await waitFor(() => l.proc.hasExited, 500))) safeKill(l.proc.pid);
    await l.proc.exited;
    await l.cg.remove().catch(() => undefined);
    unlinkFifos(l);
  }

  exec(req: ExecRequest): Promise<ExecResult> {
    const before = this.running;
    const result = this.runExec(req);
    // runExec marks the sandbox busy before its first await: when it did, release() waits for this exec to end
    // (a launch under way would otherwise create its FIFOs in a directory release has just removed).
    if (this.running !== before) {
      this.execEnded = result.then(
        () => undefined,
        () => undefined,
      );
    }
    return result;
  }

  private async runExec(req: ExecRequest): Promise<ExecResult> {
    this.assertLive();
    if (this.running) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id} is already running an exec`, { retryable: false });
    }
    const script = launchScript(req);
    const started = performance.now();
    const notRun = (): ExecResult => notRunResult(started);
    if (req.signal?.aborted) return notRun();
    // Busy from here on (archive calls and a second exec are refused); a kill
    // requested before the process exists is replayed once it does.
    let earlyKill: ExecLimitHit | null = null;
    this.running = { kill: (why) => (earlyKill ??= why) };
    let l = this.launched;
    this.launched = null;
    try {
      // A pre-started bwrap that died while idle (its setup failed) is replaced.
      if (l?.proc.hasExited) {
        await this.discard(l);
        l = null;
      }
      l ??= await this.launch();
    } catch (err) {
      this.running = null;
      throw err;
    }
    if (this.releasing) {
      // Released while it was being started: run nothing, leave nothing.
      this.running = null;
      await this.discard(l);
      this.assertLive();
    }
    if (req.signal?.aborted) {
      // Aborted while bwrap was being started: the request is never written.
      this.running = null;
      await this.discard(l);
      return notRun();
    }
    const { proc, cg, procsFile } = l;
    // Cgroup sweeps started from event handlers; awaited before exec returns so
    // a late sweep can never hit the next exec's processes.
    const sweeps: Promise<void>[] = [];
    // The whole tree goes, once, for the first limit hit (the shared supervision decides when).
    const killTree = (): void => {
      if (!procsFile) {
        safeKill(proc.pid);
        sweeps.push(cg.killAll().catch(() => undefined));
        return;
      }
      // Everything but bwrap's monitor first: the monitor then reaps the
      // namespace's init itself and exits (no orphaned zombie, see
      // sandbox-kill.ts). Killed directly when it has not joined the cgroup
      // yet (bwrap not started) or lingers; the sweep catches the rest.
      sweeps.push(
        (async () => {
          if (await isListed(procsFile, proc.pid)) {
            await killAllExcept(procsFile, proc.pid);
            if (!(await waitFor(() => proc.hasExited, 500))) safeKill(proc.pid);
          } else {
            safeKill(proc.pid);
          }
          await cg.killAll();
        })().catch(() => undefined),
      );
    };

    const writers: net.Socket[] = [];
    let sup: ExecSupervision | undefined;
    try {
      const streams = { stdout: fifoSocket(l.fifos.stdout, "read"), stderr: fifoSocket(l.fifos.stderr, "read") };
      // Timer, abort, output caps and the limit precedence: providers/exec-supervision.ts.
      sup = new ExecSupervision(req, { kill: killTree, streams });
      // Without a writer the program reads end-of-file, as from /dev/null. The
      // writer opens before the request: the program never sees a premature end.
      if (req.stdin !== undefined) {
        const w = fifoSocket(l.fifos.stdin, "write");
        writers.push(w);
        w.end(req.stdin);
      }
      const r = fifoSocket(l.fifos.request, "write");
      writers.push(r);
      r.end(script);
    } catch (err) {
      // The launcher is gone (ENXIO: no reader) or the FIFOs are: nothing of the job ran.
      this.running = null;
      sup?.stop();
      for (const w of writers) w.destroy();
      await this.discard(l);
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: could not hand the request to bwrap: ${(err as Error).message}`, {
        retryable: true,
        cause: err,
      });
    }
    const supervised = sup;
    const kill = (why: ExecLimitHit): void => supervised.hit(why);
    this.running = { kill };
    if (earlyKill) kill(earlyKill);

    // cgroup v1 has no memory.oom.group: the first OOM event ends the whole
    // exec, as on v2, instead of leaving survivors to run into the timeout.
    // The helper reports it from a kernel eventfd (sent as the kernel declares
    // the OOM, before its kill: no counter to confirm yet).
    void proc.oom.then(() => {
      if (this.running?.kill === kill) kill("memory");
    });

    try {
      const status = await proc.exited;
      await Promise.all([sup.stdout.done, sup.stderr.done]);
      const exitCode = status.code;
      const signal = status.signal === null ? null : (SIGNAL_NAMES.get(status.signal) ?? `SIG${status.signal}`);
      // bwrap exits only after the namespace's init, and the kernel kills every
      // process of a pid namespace whose init dies: nothing of the job is left
      // (the leaf removal below sweeps the cgroup once more anyway).
      await Promise.all(sweeps);
      const after = await cg.counters();
      if (after.oomKills > 0) sup.note("memory");
      if (after.pidsMaxHits > 0) sup.note("pids");
      if (this.releasing && sup.killed) sup.note("aborted");
      if (signal !== null && !sup.killed && sup.limitHit === null) {
        // bwrap's monitor runs outside the sandbox's pid namespace: nothing of
        // the job can signal it, and we did not. Something on the host killed
        // the sandbox (an operator, a reaper, the host's OOM killer): a runner
        // fault to retry, never the job's own failure.
        throw new ProviderError(
          ErrorCodes.SANDBOX_LOST,
          `sandbox ${this.id} was killed from outside (bwrap ended by ${signal}; no limit of the job was hit)`,
          { retryable: true },
        );
      }
      // A sandbox the provider killed reports the kill, whatever bwrap's own exit status.
      return sup.result({ exitCode, signal });
    } catch (err) {
      // An exited bwrap's pid may be reused: only a live one is killed (the leaf removal below sweeps the cgroup).
      if (!proc.hasExited) kill("aborted");
      if (isSandqueueError(err)) throw err;
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox ${this.id}: could not run bwrap: ${(err as Error).message}`, {
        retryable: true,
        cause: err,
      });
    } finally {
      await Promise.all(sweeps);
      for (const w of writers) w.destroy();
      // Off the result's path; release() waits for it.
      const launched = l;
      // The bridge exits with bwrap by itself; stopped here so none outlives its exec.
      const removal = Promise.all([launched.bridge && stopBridge(launched.bridge), cg.remove()]).then(() => unlinkFifos(launched), () => undefined);
      this.leafRemovals.add(removal);
      void removal.then(() => this.leafRemovals.delete(removal));
      sup.stop();
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

  async putArchive(dir: string, tar: Readable, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const { signal } = opts;
    const what = `sandbox ${this.id}: putArchive`;
    try {
      this.assertIdle("putArchive");
      throwIfTransferAborted(what, signal);
      const hostDir = await hostDirFor(this.ctx.workspaceHostDir, dir, true);
      // extractTar stages the entries and moves them in only once the whole
      // archive is read: an abort leaves the workspace as it was.
      await extractTar(hostDir, tar, { ...this.ctx.archiveLimits, signal });
    } catch (err) {
      if (!signal?.aborted) throw err;
      tar.destroy();
      throw transferAborted(what, signal);
    }
  }

  async getArchive(dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
    const { signal, ...packOpts } = opts;
    const what = `sandbox ${this.id}: getArchive`;
    this.assertIdle("getArchive");
    throwIfTransferAborted(what, signal);
    const hostDir = await hostDirFor(this.ctx.workspaceHostDir, dir, false);
    // An abort fails the stream (and stops the walk): a store reading it never sees an end.
    return destroyOnAbort(packDir(hostDir, packOpts), what, signal);
  }

  release(): Promise<void> {
    this.releasing ??= this.doRelease();
    return this.releasing;
  }

  /** Every step runs even when an earlier one fails; the first failure is reported. */
  private async doRelease(): Promise<void> {
    this.running?.kill("aborted");
    const idle = this.launched;
    this.launched = null;
    const steps = [
      () => (idle ? this.discard(idle) : Promise.resolve()),
      // Killed above: it ends promptly, and only then are its leaf removals all registered.
      () => this.execEnded ?? Promise.resolve(),
      () => Promise.all(this.leafRemovals),
      () => this.ctx.cgroup.remove(),
      // Only our files (CA bundle, proxy socket): the sandbox sees the directory read-only.
      () => (this.ctx.egressHostDir ? rm(this.ctx.egressHostDir, { recursive: true, force: true }) : Promise.resolve()),
      // Any depth; symlinks planted in the workspace are unlinked, never followed (remove-tree.ts).
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
 * Sets every process of a pre-started sandbox back to niceness 0 before its
 * request is written (only bwrap and the waiting launcher exist then). bwrap
 * may still be setting up and forking: a child forked between a read of
 * cgroup.procs and its parent's reset keeps the pool's niceness, so the
 * list is read again until a pass finds no process it had not reset.
 */
function resetNiceness(procsFile: string): void {
  const done = new Set<number>();
  for (let pass = 0; pass < 10; pass++) {
    const fresh = readProcs(procsFile).filter((pid) => !done.has(pid));
    if (fresh.length === 0) return;
    for (const pid of fresh) {
      done.add(pid);
      try {
        os.setPriority(pid, 0);
      } catch {
        // exited meanwhile
      }
    }
  }
}

function safeKill(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}

function unlinkFifos(l: Launched): void {
  for (const file of Object.values(l.fifos)) {
    try {
      unlinkSync(file);
    } catch {
      // already gone (or never made)
    }
  }
}
