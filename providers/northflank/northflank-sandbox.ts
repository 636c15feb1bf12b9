/**
 * One sandbox on Northflank: an instance (container) of a service, driven
 * through @northflank/js-client only. Either the service was created for it
 * (ephemeral: `ownedByClient`, deleted on release) or it is an instance of
 * an attached service held under a lease (never deleted, never paused: its
 * workspace is emptied and the lease dropped on release).
 *
 * Commands run under the exec shim (providers/remote/exec-shim.ts) through
 * the SDK's exec session: exact env and cwd, its own network namespace,
 * deadline and output caps applied in the instance, both streams
 * base64-encoded; the shared supervision applies them on this side too, and
 * ends a command by closing its socket. Workspaces move as tar over the same
 * sessions (providers/remote/tar-over-exec.ts), validated on the worker.
 */
import type { Readable } from "node:stream";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import type { PackOptions } from "../archive/index.js";
import { notRunResult } from "../exec-supervision.js";
import type { ExecRequest, ExecResult, Sandbox } from "../provider.js";
import { runShimmed, type ShimTransport, type TransportOutput } from "../remote/exec-shim.js";
import { getArchiveOverExec, putArchiveOverExec } from "../remote/tar-over-exec.js";
import { translateError } from "./errors.js";
import type { Lease } from "./lease.js";
import type { NorthflankProvider } from "./northflank-provider.js";

export class NorthflankSandbox implements Sandbox {
  readonly id: string;
  private released: Promise<void> | undefined;
  private readonly releasing = new AbortController();
  /** The instance went away, or a command could not be ended in it. */
  private lost = false;

  constructor(
    private readonly provider: NorthflankProvider,
    readonly serviceId: string,
    readonly instance: string,
    /** The ownership decision: true only for a service this provider created (and so may delete). */
    readonly ownedByClient: boolean,
    readonly lease?: Lease,
  ) {
    this.id = ownedByClient ? serviceId : `${serviceId}/${instance}`;
  }

  private ensureLive(op: string): void {
    if (this.released) throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released (${op})`);
  }

  /** One command in this instance, output as text (the shim's and tar-over-exec's are base64/ASCII). */
  private async run(argv: string[], opts: { timeoutMs: number; signal?: AbortSignal }): Promise<TransportOutput> {
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.releasing.signal]) : this.releasing.signal;
    try {
      const r = await this.provider.api.session(this.serviceId, this.instance, argv, { timeoutMs: opts.timeoutMs, signal });
      return { stdout: r.stdout.toString("utf8"), stderr: r.stderr.toString("utf8"), exitCode: r.exitCode };
    } catch (err) {
      if (signal.aborted) throw err;
      if (!(await this.provider.instanceRunning(this.serviceId, this.instance).catch(() => true))) {
        this.lost = true;
        throw new ProviderError(ErrorCodes.SANDBOX_LOST, `northflank: instance ${this.instance} of service ${this.serviceId} went away during a command`, {
          retryable: true,
          cause: err,
          details: { sandbox: this.id },
        });
      }
      throw translateError(err, `exec in ${this.id}`);
    }
  }

  private readonly transport: ShimTransport = {
    run: (argv, opts) => this.run(argv, opts),
    // The shim did not end in time: its socket is closed already (the call's signal); a service
    // of our own goes too, an attached one never.
    kill: async () => {
      this.lost = true;
      if (this.ownedByClient) await this.provider.deleteService(this.serviceId);
    },
  };

  async exec(req: ExecRequest): Promise<ExecResult> {
    if (this.released) this.ensureLive("exec");
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
    await putArchiveOverExec((argv, o) => this.run(argv, o), dir, tar, this.provider.archiveLimits, opts.signal);
  }

  async getArchive(dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
    this.ensureLive("getArchive");
    return getArchiveOverExec((argv, o) => this.run(argv, o), dir, opts);
  }

  /** Whether a command was lost with the instance (tests, logs). */
  get isLost(): boolean {
    return this.lost;
  }

  release(): Promise<void> {
    this.released ??= (async () => {
      this.provider.forget(this);
      // A running exec sees the abort, reports "aborted", and its socket closes.
      this.releasing.abort();
      if (this.ownedByClient) await this.provider.deleteService(this.serviceId);
      else await this.provider.returnInstance(this);
    })();
    return this.released;
  }
}
