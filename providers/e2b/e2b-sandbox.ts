/**
 * One E2B sandbox, driven through the `e2b` SDK only. Commands run through
 * `commands.start` (envd's streamed Process/Start): output reaches the
 * shared supervision as it streams, so caps and the wall time are applied
 * while the command runs. A kill is envd's SendSignal(SIGKILL) through the
 * handle (`handle.kill()`): closing the stream alone would leave the command
 * running, as envd keeps a command whose client went away. Files move as tar
 * through the SDK's file API: validated on the worker (providers/archive),
 * written to a file in the sandbox and extracted there by `tar` (the reverse
 * for getArchive), like every provider's.
 */
import { Readable } from "node:stream";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import { CommandExitError, NotFoundError, Sandbox as SdkSandbox, SandboxNotFoundError, TimeoutError, type CommandHandle } from "e2b";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { destroyOnAbort, guardPut, throwIfTransferAborted, transferAborted } from "../abort.js";
import { normalizeTar, readValidatedTar, type PackOptions } from "../archive/index.js";
import { ExecSupervision, notRunResult } from "../exec-supervision.js";
import type { ExecRequest, ExecResult, Sandbox } from "../provider.js";
import { shellQuote } from "../request-script.js";
import { CHECK_DIR, shCommandLine, stagedTar, stepFailed, workspacePath } from "../remote/tar-over-exec.js";
import { e2bCommand } from "./command.js";
import { translateSdkError } from "./errors.js";
import type { E2bProvider } from "./e2b-provider.js";

// $1: the target (absolute, under /workspace); $2: the staged tar, removed whatever happens.
// Staged in /workspace, not /tmp: a service may give each command its own /tmp (the stand-in's sandboxes do).
const PUT_SCRIPT = `trap 'rm -f -- "$2"' EXIT; mkdir -p -- "$1" 2>/dev/null; ${CHECK_DIR}; tar -x -o -f "$2"`;
// $3: the staged tar's name, left out of the archive when $1 is /workspace itself.
const GET_SCRIPT = `${CHECK_DIR}; tar -c -f "$2" --exclude="./$3" . || { rm -f -- "$2"; exit 5; }`;

/** How long an archive script may run, ms. */
const ARCHIVE_EXEC_TIMEOUT_MS = 300_000;
/** envd's own deadline for a command stands this far behind ours: our kill comes first. */
const SERVER_DEADLINE_GRACE_MS = 2_000;
/** How long the kill (SendSignal) of a command may take before the sandbox is given up on for reuse. */
const KILL_TIMEOUT_MS = 10_000;
/** Stdin goes as SendInput calls of at most this many bytes. */
const STDIN_CHUNK = 64 * 1024;

export class E2bSandbox implements Sandbox {
  readonly id: string;
  private released: Promise<void> | undefined;
  private readonly releaseController = new AbortController();

  constructor(
    private readonly provider: E2bProvider,
    readonly sdk: SdkSandbox,
  ) {
    this.id = sdk.sandboxId;
  }

  /**
   * Every data-plane call says its own request timeout: the SDK's sandbox
   * object keeps the options it was created with, whose timeout is the
   * (longer) create timeout.
   */
  private get requestTimeoutMs(): number {
    return this.provider.conn.requestTimeoutMs;
  }

  private ensureLive(op: string): void {
    if (this.released) throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released (${op})`);
  }

  private signals(extra?: AbortSignal): AbortSignal {
    return extra ? AbortSignal.any([extra, this.releaseController.signal]) : this.releaseController.signal;
  }

  /**
   * SANDBOX_LOST when the sandbox is gone: the SDK's own verdict (envd's
   * health probe failed after a dropped connection: a TimeoutError saying
   * so), or the control plane no longer knowing it; the SDK error translated
   * otherwise.
   */
  private async explain(err: unknown, op: string): Promise<ProviderError> {
    const lost = (why: string): ProviderError =>
      new ProviderError(ErrorCodes.SANDBOX_LOST, `e2b sandbox ${this.id}: ${op}: ${why}`, { retryable: true, cause: err, details: { sandbox: this.id } });
    const gone = await SdkSandbox.getInfo(this.id, { ...this.provider.conn, requestTimeoutMs: 10_000 }).then(
      () => false,
      (e: unknown) => e instanceof NotFoundError,
    );
    if (gone) return lost("the sandbox is gone");
    if (err instanceof TimeoutError && /killed or reached its end of life/.test(err.message)) return lost("the sandbox was killed or timed out");
    // The SDK calls any failed start of a command (a 502/503/429 from the edge) "probably not running anymore"; the service still lists it.
    if (err instanceof SandboxNotFoundError) {
      return new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `e2b sandbox ${this.id}: ${op}: envd did not answer (${err.message})`, { retryable: true, cause: err });
    }
    return translateSdkError(err, `sandbox ${this.id}: ${op}`);
  }

  async exec(req: ExecRequest): Promise<ExecResult> {
    this.ensureLive("exec");
    const command = e2bCommand(req); // validation before any request
    const started = performance.now();
    if (req.signal?.aborted) return notRunResult(started);
    const stream = new AbortController();
    let handle: CommandHandle | undefined;
    let killed: Promise<unknown> | undefined;
    const killCommand = (h: CommandHandle) => (killed = h.kill().catch(() => undefined));
    const sup = new ExecSupervision(req, {
      abortSignals: [this.releaseController.signal],
      // The stream ends at once (a slow service does not hold the result up); the kill ends the command too.
      kill: () => {
        stream.abort();
        if (handle) killCommand(handle);
      },
    });
    /** A killed run's result, once the kill was answered (bounded): the next exec finds nothing of it. */
    const killedResult = async (): Promise<ExecResult> => {
      await Promise.race([killed, new Promise((r) => setTimeout(r, KILL_TIMEOUT_MS).unref())]);
      return sup.result({ exitCode: null, signal: null });
    };
    try {
      handle = await this.sdk.commands.run(command, {
        background: true,
        requestTimeoutMs: this.requestTimeoutMs,
        ...(req.stdin !== undefined ? { stdin: true } : {}),
        timeoutMs: req.timeoutMs + SERVER_DEADLINE_GRACE_MS,
        signal: stream.signal,
        onStdout: (text) => sup.stdout.push(Buffer.from(text, "utf8")),
        onStderr: (text) => sup.stderr.push(Buffer.from(text, "utf8")),
      });
    } catch (err) {
      // Killed before envd said it started: the sandbox goes at release, whatever may still run in it.
      if (sup.killed) return sup.result({ exitCode: null, signal: null });
      sup.stop();
      throw await this.explain(err, "exec");
    }
    // Killed while its start was being answered.
    if (sup.killed) killCommand(handle);
    const feeding = req.stdin === undefined ? undefined : this.feed(handle, req.stdin);
    try {
      const r = await handle.wait();
      if (sup.killed) return await killedResult();
      return sup.result({ exitCode: r.exitCode, signal: null });
    } catch (err) {
      if (sup.killed) return await killedResult();
      // envd reports a command that died of a signal as exit code -1.
      if (err instanceof CommandExitError) return sup.result({ exitCode: err.exitCode < 0 ? null : err.exitCode, signal: null });
      sup.stop();
      throw await this.explain(err, "exec");
    } finally {
      await feeding;
    }
  }

  /** Sends stdin in chunks, then end-of-file. A command that ends before reading it all is not an error. */
  private async feed(handle: CommandHandle, stdin: Buffer | string): Promise<void> {
    const bytes = typeof stdin === "string" ? Buffer.from(stdin, "utf8") : stdin;
    try {
      for (let at = 0; at < bytes.length; at += STDIN_CHUNK) await handle.sendStdin(bytes.subarray(at, at + STDIN_CHUNK), { requestTimeoutMs: this.requestTimeoutMs });
      await handle.closeStdin({ requestTimeoutMs: this.requestTimeoutMs });
    } catch {
      // The command is gone (ended, killed): its result says how.
    }
  }

  /** A short script (no job's request, our own text): its exit code and stderr. */
  private async script(script: string, args: string[], signal: AbortSignal | undefined, what: string): Promise<{ stdout: string; stderr: string; exitCode: number }> {
    try {
      const r = await this.sdk.commands.run(shCommandLine(script, args), { timeoutMs: ARCHIVE_EXEC_TIMEOUT_MS, requestTimeoutMs: this.requestTimeoutMs, signal: this.signals(signal) });
      return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode };
    } catch (err) {
      if (err instanceof CommandExitError) return { stdout: err.stdout, stderr: err.stderr, exitCode: err.exitCode };
      if (signal?.aborted) throw transferAborted(what, signal);
      if (this.releaseController.signal.aborted) throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released (${what})`);
      throw await this.explain(err, what);
    }
  }

  async putArchive(dir: string, tar: Readable, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const { signal } = opts;
    const what = `sandbox ${this.id}: putArchive`;
    await guardPut(tar, what, signal, async () => {
      this.ensureLive("putArchive");
      const abs = workspacePath(dir); // escapes refused before any request
      const bytes = await readValidatedTar(tar, this.provider.archiveLimits, what, signal);
      const staged = stagedTar("put").path;
      try {
        await this.sdk.files.write(staged, new Blob([bytes]), { requestTimeoutMs: this.requestTimeoutMs, signal: this.signals(signal) });
      } catch (err) {
        throw signal?.aborted ? err : await this.explain(err, "putArchive upload");
      }
      const r = await this.script(PUT_SCRIPT, ["sandqueue-put", abs, staged], signal, what);
      if (r.exitCode !== 0) throw stepFailed("putArchive", dir, r);
    });
  }

  async getArchive(dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
    const { signal, ...packOpts } = opts;
    const what = `sandbox ${this.id}: getArchive`;
    this.ensureLive("getArchive");
    throwIfTransferAborted(what, signal);
    const abs = workspacePath(dir);
    const { name, path: staged } = stagedTar("get");
    const r = await this.script(GET_SCRIPT, ["sandqueue-get", abs, staged, name], signal, what);
    if (r.exitCode !== 0) throw stepFailed("getArchive", dir, r);
    const removeStaged = () => this.sdk.commands.run(`rm -f -- ${shellQuote(staged)}`, { timeoutMs: 30_000, requestTimeoutMs: this.requestTimeoutMs }).then(
      () => undefined,
      () => undefined,
    );
    let body: ReadableStream<Uint8Array>;
    try {
      // Streamed: the archive limits (normalizeTar) stop the download, nothing is held whole in memory.
      body = await this.sdk.files.read(staged, { format: "stream", requestTimeoutMs: this.requestTimeoutMs, signal: this.signals(signal) });
    } catch (err) {
      await removeStaged();
      throw signal?.aborted ? transferAborted(what, signal) : await this.explain(err, "getArchive download");
    }
    const raw = Readable.fromWeb(body as WebReadableStream<Uint8Array>);
    raw.once("close", () => void removeStaged());
    return destroyOnAbort(normalizeTar(destroyOnAbort(raw, what, signal), packOpts), what, signal);
  }

  release(): Promise<void> {
    this.released ??= (async () => {
      this.provider.forget(this);
      // A running exec sees the abort and reports "aborted"; the kill below takes the whole sandbox.
      this.releaseController.abort();
      await this.provider.destroy(this.id);
    })();
    return this.released;
  }
}

