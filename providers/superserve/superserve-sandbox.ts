/**
 * One Superserve sandbox (a Firecracker microVM on the service), driven
 * through @superserve/sdk only. Commands run through `commands.run` with
 * output callbacks, i.e. the streamed (SSE) exec: output reaches the shared
 * supervision as it is written, so caps and the wall time are applied while
 * the command runs, and a kill is closing that stream. Files move as tar
 * through the SDK's file API: validated on the worker (providers/archive),
 * written to a temporary file in the sandbox, extracted by `tar` there (and
 * the reverse for getArchive), like every provider's.
 */
import { Readable } from "node:stream";
import { NotFoundError, type Sandbox as SdkSandbox } from "@superserve/sdk";
import { ErrorCodes, ProviderError, SnapshotError } from "../../errors/index.js";
import { destroyOnAbort, guardPut, throwIfTransferAborted, transferAborted } from "../abort.js";
import { normalizeTar, readValidatedTar, type PackOptions } from "../archive/index.js";
import { ExecSupervision, notRunResult } from "../exec-supervision.js";
import type { ExecRequest, ExecResult, Sandbox } from "../provider.js";
import { shellQuote } from "../request-script.js";
import { shCommandLine, stagedTar, workspacePath } from "../remote/tar-over-exec.js";
import { commandString } from "./command.js";
import { translateSdkError } from "./errors.js";
import type { SuperserveProvider } from "./superserve-provider.js";

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
  `[ "$(cd -P -- "$p" && pwd -P)" = "$p" ] || exit ${THROUGH_SYMLINK}`,
].join("\n");
// $2: the staged tar, removed whatever happens. It is staged in /workspace,
// not /tmp: a service may give each command its own /tmp (the stand-in's
// sandboxes do), while the workspace is the one place every command shares.
const PUT_SCRIPT = `trap 'rm -f -- "$2"' EXIT\n${CHECK_DIR}\nmkdir -p -- "$d" && cd -- "$d" && tar -x -f "$2"`;
// $3: the staged tar's name, left out of the archive when $d is /workspace itself.
const GET_SCRIPT = `${CHECK_DIR}\n[ "$p" = "$d" ] || exit ${NOT_A_DIR}\ncd -- "$d" && tar -c -f "$2" --exclude="./$3" . || { rm -f -- "$2"; exit 5; }`;

/** How long an archive script may run, ms. */
const ARCHIVE_EXEC_TIMEOUT_MS = 300_000;
/** The service's own deadline (whole seconds) stands this far behind ours: our kill comes first. */
const SERVER_DEADLINE_GRACE_MS = 2_000;

export class SuperserveSandbox implements Sandbox {
  readonly id: string;
  private released: Promise<void> | undefined;
  private readonly releaseController = new AbortController();
  /** An exec was killed or the sandbox found gone: it is deleted at release, never paused for reuse. */
  private tainted = false;
  private running = 0;

  constructor(
    private readonly provider: SuperserveProvider,
    readonly sdk: SdkSandbox,
    readonly template: string,
  ) {
    this.id = sdk.id;
  }

  private ensureLive(op: string): void {
    if (this.released) throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released (${op})`);
  }

  private signals(extra?: AbortSignal): AbortSignal {
    return extra ? AbortSignal.any([extra, this.releaseController.signal]) : this.releaseController.signal;
  }

  /** SANDBOX_LOST when the service says the sandbox is gone or failed; the SDK error translated otherwise. */
  private async explain(err: unknown, op: string): Promise<ProviderError> {
    const lost = (why: string): ProviderError => {
      this.tainted = true;
      return new ProviderError(ErrorCodes.SANDBOX_LOST, `superserve sandbox ${this.id}: ${op}: ${why}`, { retryable: true, cause: err, details: { sandbox: this.id } });
    };
    if (err instanceof NotFoundError) return lost("the sandbox is gone");
    const status = await this.sdk.getInfo().then(
      (i) => String(i.status),
      (e: unknown) => (e instanceof NotFoundError ? "deleted" : undefined),
    );
    if (status === "failed" || status === "deleted") return lost(`the sandbox is ${status}`);
    return translateSdkError(err, `sandbox ${this.id}: ${op}`, () => lost("the sandbox is gone"));
  }

  async exec(req: ExecRequest): Promise<ExecResult> {
    this.ensureLive("exec");
    if (req.stdin !== undefined) {
      throw new ProviderError(ErrorCodes.CAPABILITY_UNSUPPORTED, "the superserve provider cannot feed stdin to a command (capability stdin)", { retryable: false });
    }
    const command = commandString(req);
    const started = performance.now();
    if (req.signal?.aborted) return notRunResult(started);
    const call = new AbortController();
    const sup = new ExecSupervision(req, {
      abortSignals: [this.releaseController.signal],
      kill: () => call.abort(),
    });
    this.running++;
    try {
      const r = await this.sdk.commands.run(command, {
        timeoutMs: req.timeoutMs + SERVER_DEADLINE_GRACE_MS,
        signal: call.signal,
        onStdout: (text) => sup.stdout.push(Buffer.from(text, "utf8")),
        onStderr: (text) => sup.stderr.push(Buffer.from(text, "utf8")),
      });
      if (sup.killed) {
        this.tainted = true;
        return sup.result({ exitCode: null, signal: null });
      }
      return sup.result({ exitCode: r.exitCode, signal: null });
    } catch (err) {
      if (sup.killed) {
        // Our kill: the stream was closed under the command, which the service ends with it.
        this.tainted = true;
        return sup.result({ exitCode: null, signal: null });
      }
      sup.stop();
      throw await this.explain(err, "exec");
    } finally {
      this.running--;
    }
  }

  /** A short script through the synchronous exec: its exit code and stderr. */
  private async script(script: string, args: string[], signal: AbortSignal | undefined, what: string): Promise<{ exitCode: number; stderr: string }> {
    try {
      const r = await this.sdk.commands.run(shCommandLine(script, args), { timeoutMs: ARCHIVE_EXEC_TIMEOUT_MS, signal: this.signals(signal) });
      return { exitCode: r.exitCode, stderr: r.stderr.trim() };
    } catch (err) {
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
      const tmp = stagedTar("put").path;
      try {
        await this.sdk.files.write(tmp, bytes, { signal: this.signals(signal) });
      } catch (err) {
        throw signal?.aborted ? err : await this.explain(err, "putArchive upload");
      }
      const r = await this.script(PUT_SCRIPT, ["sandqueue-put", abs, tmp], signal, what);
      if (r.exitCode !== 0) throw pathRefused(dir, r.exitCode, r.stderr);
    });
  }

  async getArchive(dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
    const { signal, ...packOpts } = opts;
    const what = `sandbox ${this.id}: getArchive`;
    this.ensureLive("getArchive");
    throwIfTransferAborted(what, signal);
    const abs = workspacePath(dir);
    const { name: staged, path: tmp } = stagedTar("get");
    const r = await this.script(GET_SCRIPT, ["sandqueue-get", abs, tmp, staged], signal, what);
    if (r.exitCode !== 0) throw pathRefused(dir, r.exitCode, r.stderr);
    let bytes: Uint8Array;
    try {
      const limits = this.provider.archiveLimits;
      bytes = await this.sdk.files.read(tmp, { signal: this.signals(signal), maxBytes: limits.maxBytes + limits.maxEntries * 1536 + (1 << 20) });
    } catch (err) {
      throw signal?.aborted ? transferAborted(what, signal) : await this.explain(err, "getArchive download");
    } finally {
      await this.sdk.commands.run(`rm -f -- ${shellQuote(tmp)}`, { timeoutMs: 30_000 }).catch(() => undefined);
    }
    const raw = Readable.from([Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)]);
    return destroyOnAbort(normalizeTar(destroyOnAbort(raw, what, signal), packOpts), what, signal);
  }

  /** Whether release may pause this sandbox for reuse instead of deleting it. */
  get reusable(): boolean {
    return !this.tainted && this.running === 0;
  }

  release(): Promise<void> {
    this.released ??= (async () => {
      const reusable = this.reusable;
      this.provider.forget(this);
      // A running exec sees the abort and reports "aborted".
      this.releaseController.abort();
      if (reusable) await this.provider.park(this);
      else await this.provider.destroy(this.sdk);
    })();
    return this.released;
  }
}

function pathRefused(dir: string, exitCode: number, stderr: string): Error {
  if (exitCode === THROUGH_SYMLINK) return new SnapshotError(ErrorCodes.TAR_THROUGH_SYMLINK, `sandbox path '${dir}' goes through a symlink; refused`);
  if (exitCode === NOT_A_DIR) return new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox path '${dir}' is not a directory`);
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `tar in the sandbox failed for '${dir}' (exit ${exitCode}): ${stderr.slice(0, 500)}`);
}
