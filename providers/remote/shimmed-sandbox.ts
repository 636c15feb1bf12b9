/**
 * What the sandboxes of services with a plain synchronous exec call
 * (microsandbox, deer-flow's provisioner) share: the released/lost states,
 * exec through the exec shim, and a release that deletes the sandbox once.
 * A subclass says how to run an argv there and how to delete the sandbox;
 * archives move over that same exec (tar-over-exec) unless it says otherwise.
 */
import type { Readable } from "node:stream";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import type { ArchiveLimits, PackOptions } from "../archive/index.js";
import { notRunResult } from "../exec-supervision.js";
import type { ExecRequest, ExecResult, Sandbox } from "../provider.js";
import { runShimmed, type ShimTransport } from "./exec-shim.js";
import { getArchiveOverExec, putArchiveOverExec, type RawOutput } from "./tar-over-exec.js";

export interface RunOptions {
  timeoutMs: number;
  signal?: AbortSignal;
}

/** The provider side: it stops tracking a sandbox once that is released. */
export interface SandboxTracker<T> {
  forget(box: T): void;
}

export abstract class ShimmedSandbox implements Sandbox {
  protected released: Promise<void> | undefined;
  /** The sandbox is gone on the service (found missing, or deleted by a kill). */
  protected lost = false;
  private readonly releasing = new AbortController();

  constructor(
    private readonly tracker: SandboxTracker<ShimmedSandbox>,
    readonly id: string,
  ) {}

  /** Runs argv (no shell) in the sandbox and waits for its end. */
  protected abstract run(argv: string[], opts: RunOptions): Promise<RawOutput>;
  /** Deletes the sandbox on the service (a missing one counts as deleted). */
  protected abstract destroy(): Promise<void>;
  /** What a put archive may hold. */
  protected abstract readonly archiveLimits: ArchiveLimits;

  protected ensureLive(op: string): void {
    if (this.released) throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released (${op})`);
    if (this.lost) throw new ProviderError(ErrorCodes.SANDBOX_LOST, `sandbox ${this.id} is gone (${op})`, { retryable: true });
  }

  private readonly transport: ShimTransport = {
    run: (argv, opts) => this.run(argv, opts),
    kill: async () => {
      this.lost = true;
      await this.destroy();
    },
  };

  async exec(req: ExecRequest): Promise<ExecResult> {
    if (this.released) this.ensureLive("exec");
    // An exec aborted before it starts runs nothing, even on a sandbox an earlier abort deleted.
    if (req.signal?.aborted) return notRunResult();
    this.ensureLive("exec");
    return runShimmed(this.transport, req, [this.releasing.signal]);
  }

  async putArchive(dir: string, tar: Readable, opts: { signal?: AbortSignal } = {}): Promise<void> {
    try {
      this.ensureLive("putArchive");
    } catch (err) {
      tar.destroy();
      throw err;
    }
    await putArchiveOverExec((argv, o) => this.run(argv, o), dir, tar, this.archiveLimits, opts.signal);
  }

  async getArchive(dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
    this.ensureLive("getArchive");
    return getArchiveOverExec((argv, o) => this.run(argv, o), dir, opts);
  }

  release(): Promise<void> {
    this.released ??= (async () => {
      this.tracker.forget(this);
      this.releasing.abort();
      await this.destroy();
    })();
    return this.released;
  }
}
