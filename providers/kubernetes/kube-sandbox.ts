/**
 * A sandbox pod: jobs run through exec (pod-exec.ts) under the shared
 * supervision; files move as tar over exec, validated on the worker
 * (providers/archive) like every provider's. Small archives put into
 * /workspace ride along with the next exec (carried-put.ts).
 *
 * Killing: closing an exec's connection makes the runtime kill the exec's
 * process (containerd: SIGKILL; the stand-in kills its whole tree); then
 * `kill -9 -1` in a second exec, as the sandbox's user, takes whatever the
 * job left (children, daemons): everything but the container's init and
 * that shell itself. Release deletes the pod, which takes the rest.
 */
import path from "node:path";
import { PassThrough, type Readable } from "node:stream";
import { ErrorCodes, ProviderError, SnapshotError } from "../../errors/index.js";
import { destroyOnAbort, guardPut, rethrowAborted, throwIfTransferAborted, transferAborted } from "../abort.js";
import { normalizeTar, validateTar, type PackOptions } from "../archive/index.js";
import { ExecSupervision, notRunResult } from "../exec-supervision.js";
import { workspaceSegments } from "../local/workspace-path.js";
import { WORKSPACE_DIR, type ExecRequest, type ExecResult, type Sandbox } from "../provider.js";
import type { KubernetesProvider, PodRef } from "./kubernetes-provider.js";
import { ExecUpgradeError, envHeader, exitCodeOf, openExec, stdinStream, wrapCommand, V5, type ExecEnd, type ExecHandle } from "./pod-exec.js";
import { containerStatus } from "./pod-lifecycle.js";
import { translateKubeError } from "./kube-errors.js";
import { CONTAINER } from "./pod-spec.js";
import { CARRY_MAX_BYTES, CarriedPuts, MarkedOutput, readUpTo } from "./carried-put.js";

/** Exit codes of the archive scripts: a symlink on the way, not a directory. */
const THROUGH_SYMLINK = 3;
const NOT_A_DIR = 4;

// $1 is an absolute, normalised path under /workspace. The deepest existing
// part must be a real directory at its own physical path (no symlink).
const CHECK_DIR = [
  'd=$1; p=$d',
  'while [ -n "$p" ] && [ ! -e "$p" ] && [ ! -L "$p" ]; do p=${p%/*}; done',
  `[ -L "$p" ] && exit ${THROUGH_SYMLINK}`,
  `[ -d "$p" ] || exit ${NOT_A_DIR}`,
  // cd -P sets PWD to the physical path (no subshell, no fork): any symlink on the way shows as a difference.
  `cd -P -- "$p" && [ "$PWD" = "$p" ] || exit ${THROUGH_SYMLINK}`,
].join("\n");
const PUT_SCRIPT = `${CHECK_DIR}\n{ [ "$p" = "$d" ] || mkdir -p -- "$d"; } && cd -- "$d" && exec tar -x -f -`;
const GET_SCRIPT = `${CHECK_DIR}\n[ "$p" = "$d" ] || exit ${NOT_A_DIR}\ncd -- "$d" && exec tar -c -f - .`;
const KILL_LEFTOVERS = "kill -9 -1 2>/dev/null; true";

/** How long the leftover sweep may take before it is given up (the pod is deleted at release anyway). */
const SWEEP_TIMEOUT_MS = 5_000;
/** How long a container restarted by a memory kill may take to run again. */
const RESTART_WAIT_MS = 30_000;

export class KubeSandbox implements Sandbox {
  readonly id: string;
  private released: Promise<void> | undefined;
  private readonly releaseController = new AbortController();
  private restarts: number;
  /** A memory kill restarted the container: the next exec waits for it to run. */
  private restarting = false;
  /** Archives put into /workspace, extracted by the next exec. */
  private readonly carried = new CarriedPuts();

  constructor(
    private readonly provider: KubernetesProvider,
    readonly pod: PodRef,
    /** A pooled pod's adoption patch (job label, annotations, deadline), settled either way. */
    readonly adopted: Promise<void> = Promise.resolve(),
  ) {
    this.id = pod.name;
    this.restarts = pod.restarts;
  }

  private ensureLive(op: string): void {
    if (this.released) throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released (${op})`);
  }

  private async open(argv: string[], stdin: Readable | null, onStdout: (c: Buffer) => void, onStderr: (c: Buffer) => void): Promise<ExecHandle> {
    const p = this.provider;
    try {
      return await openExec({ kc: p.kc, namespace: p.namespace, pod: this.pod.name, container: CONTAINER, argv, stdin, onStdout, onStderr });
    } catch (err) {
      if (err instanceof ExecUpgradeError && err.code === 404) throw await this.lostError("exec refused: no such pod");
      throw translateKubeError(err, { op: "exec", server: p.server });
    }
  }

  async exec(req: ExecRequest): Promise<ExecResult> {
    this.ensureLive("exec");
    const started = performance.now();
    if (req.signal?.aborted) return notRunResult(started);
    if (this.restarting) await this.awaitRestart();
    const cwd = req.cwd ?? WORKSPACE_DIR;
    const jobStdin = req.stdin === undefined ? Buffer.alloc(0) : Buffer.from(req.stdin);
    const v5 = this.provider.speaksV5;
    const carried = this.carried.take();
    const argv = wrapCommand(req.argv, cwd, v5 ? null : jobStdin.length, carried?.args(v5 && jobStdin.length === 0) ?? null);
    // The environment first (never in the command: see envHeader), the carried archives, then the job's stdin.
    const stdin = Buffer.concat([envHeader(req.env, cwd), ...(carried ? [carried.stdin] : []), jobStdin]);
    let handle: ExecHandle | undefined;
    let killWanted = false;
    const sup = new ExecSupervision(req, {
      abortSignals: [this.releaseController.signal],
      kill: () => {
        killWanted = true;
        handle?.close();
      },
    });
    const toJob = (c: Buffer): void => sup.stdout.push(c);
    const marked = carried ? new MarkedOutput(carried.mark, toJob) : null;
    try {
      handle = await this.open(argv, stdinStream(stdin, v5 ? V5 : "v4"), marked ? (c) => marked.push(c) : toJob, (c) => sup.stderr.push(c));
    } catch (err) {
      // Nothing was extracted: the next exec (or flush) carries them again.
      if (carried) this.carried.restore(carried);
      sup.stop();
      if (sup.killed) return sup.result({ exitCode: null, signal: null });
      throw err;
    }
    if (killWanted) handle.close();
    const end = await handle.done;
    sup.stop();
    if (sup.killed) {
      if (!this.releaseController.signal.aborted) await this.sweep();
      return sup.result({ exitCode: null, signal: "SIGKILL" });
    }
    if (end.kind === "closed") throw await this.lostError(`the exec connection closed without a status (code ${end.code})`);
    const exitCode = exitCodeOf(end.status);
    if (exitCode === null) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `pod ${this.id}: exec failed: ${end.status.message ?? end.status.reason ?? "unknown"}`, {
        retryable: true,
      });
    }
    if (carried && marked && !marked.started) {
      // No mark: the extraction failed and the job never ran; its status is the put's.
      if (exitCode === 137 && (await this.killedBy()) === "pod") throw await this.lostError("the files put were being extracted when the pod was killed (exit 137)");
      throw pathRefused(carried.dir, exitCode, marked.diagnostics);
    }
    if (exitCode === 137) {
      const why = await this.killedBy();
      if (why === "memory") sup.note("memory");
      // Deleted, evicted or past its deadline under the job: not the job's failure.
      else if (why === "pod") throw await this.lostError("the job was killed with its pod (exit 137)");
    }
    return sup.result({ exitCode, signal: null });
  }

  /** Extracts the archives waiting for an exec, in one of their own (before anything that reads the workspace). */
  private async flushCarried(signal: AbortSignal | undefined, what: string): Promise<void> {
    const carried = this.carried.take();
    if (!carried) return;
    let stdout = "";
    const v5 = this.provider.speaksV5;
    const r = await this.rawExec(wrapCommand([], WORKSPACE_DIR, v5 ? null : 0, carried.args(v5)), {
      stdin: stdinBytes(Buffer.concat([envHeader({}, WORKSPACE_DIR), carried.stdin])),
      signal,
      what,
      onStdout: (c) => (stdout = (stdout + c.toString("utf8")).slice(0, 4096)),
    });
    if (r.exitCode !== 0) throw pathRefused(carried.dir, r.exitCode, stdout.trim());
  }

  /**
   * What an exit 137 came from, as far as the pod shows: "memory" when the
   * container was just OOM-killed (its restart count went up with OOMKilled
   * as the last termination, or it is terminated so); "pod" when the pod is
   * gone, being deleted, or ended (its deadline); else null, a kill the pod
   * does not explain (e.g. a single-process OOM kill under cgroup v1, or
   * the job's own kill -9): reported as the exit status it is.
   */
  private async killedBy(): Promise<"memory" | "pod" | null> {
    const pod = await this.provider.readPod(this.id).catch(() => undefined);
    if (pod === undefined) return null;
    const cs = pod ? containerStatus(pod) : undefined;
    if (cs) {
      const restarted = cs.restartCount > this.restarts;
      this.restarts = cs.restartCount;
      if (restarted && !cs.state?.running) this.restarting = true;
      const terminated = restarted ? cs.lastState?.terminated : cs.state?.terminated;
      if (terminated?.reason === "OOMKilled") return "memory";
    }
    const phase = pod?.status?.phase;
    if (!pod || pod.metadata?.deletionTimestamp || phase === "Failed" || phase === "Succeeded") return "pod";
    return null;
  }

  /** Waits for the container restarted after a memory kill to run again. */
  private async awaitRestart(): Promise<void> {
    const until = performance.now() + RESTART_WAIT_MS;
    for (let delay = 5; performance.now() < until; delay = Math.min(delay * 2, 200)) {
      const pod = await this.provider.readPod(this.id);
      if (!pod) throw await this.lostError("the pod is gone");
      if (containerStatus(pod)?.state?.running) {
        this.restarting = false;
        return;
      }
      await new Promise((r) => setTimeout(r, delay));
    }
    throw new ProviderError(ErrorCodes.SANDBOX_LOST, `pod ${this.id}: the container restarted after a memory kill is not running after ${RESTART_WAIT_MS} ms`, {
      retryable: true,
    });
  }

  /** SANDBOX_LOST, saying whether the pod is gone or only the connection. */
  private async lostError(what: string): Promise<ProviderError> {
    const pod = await this.provider.readPod(this.id).catch(() => undefined);
    const state = pod === null ? "the pod is gone" : pod?.metadata?.deletionTimestamp ? "the pod is being deleted" : pod ? `pod phase ${pod.status?.phase}` : "pod state unknown";
    return new ProviderError(ErrorCodes.SANDBOX_LOST, `sandbox pod ${this.id}: ${what}; ${state}`, { retryable: true, details: { pod: this.id } });
  }

  /** Kills what a killed job left in the container (its tree, daemons): everything the sandbox user runs but the init. */
  private async sweep(): Promise<void> {
    try {
      const h = await this.open(["/bin/sh", "-c", KILL_LEFTOVERS], null, () => undefined, () => undefined);
      const timer = setTimeout(() => h.close(), SWEEP_TIMEOUT_MS);
      await h.done;
      clearTimeout(timer);
    } catch {
      // The pod is unreachable or gone: release deletes it anyway.
    }
  }

  /**
   * One exec with a streamed stdin and raw output: resolves with its exit
   * code once it ends. A failing stdin (a tar refused by validation) or an
   * abort closes the connection, which kills the command, and rejects.
   */
  private async rawExec(
    argv: string[],
    opts: { stdin?: Readable; onStdout?: (c: Buffer) => void; signal?: AbortSignal; what: string; onOpen?: (h: ExecHandle) => void },
  ): Promise<{ exitCode: number; stderr: string }> {
    const stderr: Buffer[] = [];
    let failure: unknown = null;
    const h = await this.open(argv, opts.stdin ? stdinStream(opts.stdin, this.provider.speaksV5 ? V5 : "v4") : null, opts.onStdout ?? (() => undefined), (c) => stderr.push(c));
    opts.onOpen?.(h);
    const fail = (err: unknown): void => {
      failure ??= err;
      h.close();
    };
    opts.stdin?.on("error", fail);
    const onAbort = (): void => fail(transferAborted(opts.what, opts.signal!));
    if (opts.signal?.aborted) onAbort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const onRelease = (): void => fail(new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released (${opts.what})`));
    this.releaseController.signal.addEventListener("abort", onRelease, { once: true });
    let end: ExecEnd;
    try {
      end = await h.done;
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
      this.releaseController.signal.removeEventListener("abort", onRelease);
    }
    if (failure) throw failure;
    if (end.kind === "closed") throw await this.lostError(`${opts.what}: the exec connection closed without a status (code ${end.code})`);
    const exitCode = exitCodeOf(end.status);
    if (exitCode === null) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `pod ${this.id}: ${opts.what}: ${end.status.message ?? "exec failed"}`, { retryable: true });
    return { exitCode, stderr: Buffer.concat(stderr).toString("utf8").trim() };
  }

  async putArchive(dir: string, tar: Readable, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const { signal } = opts;
    const what = `sandbox ${this.id}: putArchive`;
    await guardPut(tar, what, signal, async () => {
      this.ensureLive("putArchive");
      const abs = workspacePath(dir);
      // The validated stream fails with the SANDQ_ERR_TAR_* error on the first bad entry; that kills the extraction.
      let body: Readable | Buffer = validateTar(destroyOnAbort(tar, what, signal), this.provider.archiveLimits);
      if (abs === WORKSPACE_DIR && this.pod.carriesPuts) {
        // Validated whole before a byte goes out; a small one waits for the next exec.
        body = await readUpTo(body, CARRY_MAX_BYTES);
        if (Buffer.isBuffer(body)) {
          this.ensureLive("putArchive");
          throwIfTransferAborted(what, signal);
          this.carried.add(dir, body);
          return;
        }
      }
      // Archives put earlier land first.
      await this.flushCarried(signal, what);
      const r = await this.rawExec(["/bin/sh", "-c", PUT_SCRIPT, "sandqueue-put", abs], { stdin: body, signal, what });
      if (r.exitCode !== 0) throw pathRefused(dir, r.exitCode, r.stderr);
    });
  }

  async getArchive(dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
    const { signal, ...packOpts } = opts;
    const what = `sandbox ${this.id}: getArchive`;
    this.ensureLive("getArchive");
    throwIfTransferAborted(what, signal);
    const abs = workspacePath(dir);
    await this.flushCarried(signal, what).catch(rethrowAborted(what, signal));
    const raw = new PassThrough();
    // Its failure reaches the reader through normalizeTar; before there is one, nobody needs to hear it.
    raw.on("error", () => undefined);
    let handle: ExecHandle | undefined;
    // Settles with the first byte of the tar (the checks passed) or the end of the exec.
    let firstByte!: () => void;
    const started = new Promise<void>((r) => (firstByte = r));
    const run = this.rawExec(["/bin/sh", "-c", GET_SCRIPT, "sandqueue-get", abs], {
      what,
      signal,
      onOpen: (h) => (handle = h),
      onStdout: (c) => {
        firstByte();
        // client-node writes without waiting: the tar is held here when its reader is slower than the pod.
        if (!raw.destroyed) raw.write(c);
      },
    });
    const outcome = run.then(
      (r) => {
        if (r.exitCode === 0) raw.end();
        else raw.destroy(pathRefused(dir, r.exitCode, r.stderr));
        return r;
      },
      (err: unknown) => {
        raw.destroy(signal?.aborted ? transferAborted(what, signal) : (err as Error));
        throw err;
      },
    );
    await Promise.race([started, outcome]).catch((err: unknown) => {
      if (signal?.aborted) throw transferAborted(what, signal);
      throw err;
    });
    outcome.catch(() => undefined);
    const early = await Promise.race([outcome.then((r) => r), started.then(() => null)]).catch(() => null);
    if (early && early.exitCode !== 0) throw pathRefused(dir, early.exitCode, early.stderr);
    // The reader going away (or failing) ends the exec.
    raw.once("close", () => handle?.close());
    return destroyOnAbort(normalizeTar(destroyOnAbort(raw, what, signal), packOpts), what, signal);
  }

  release(): Promise<void> {
    this.released ??= (async () => {
      this.provider.forget(this);
      this.carried.clear();
      // A running exec sees the abort and reports "aborted".
      this.releaseController.abort();
      // A patch landing after the delete would only fail; let it finish first.
      await this.adopted;
      await this.provider.deletePod(this.id);
    })();
    return this.released;
  }
}

/** The absolute path of an archive target: /workspace or below, normalised. */
function workspacePath(dir: string): string {
  return path.posix.join(WORKSPACE_DIR, ...workspaceSegments(dir));
}

/** A buffer as a stream (rawExec streams its stdin). */
function stdinBytes(b: Buffer): Readable {
  const s = new PassThrough();
  s.end(b);
  return s;
}

function pathRefused(dir: string, exitCode: number, stderr: string): Error {
  if (exitCode === THROUGH_SYMLINK) return new SnapshotError(ErrorCodes.TAR_THROUGH_SYMLINK, `sandbox path '${dir}' goes through a symlink; refused`);
  if (exitCode === NOT_A_DIR) return new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox path '${dir}' is not a directory`);
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `tar in the sandbox failed for '${dir}' (exit ${exitCode}): ${stderr.slice(0, 500)}`);
}
