/**
 * One sandbox on Northflank: an instance (container) of a service, driven
 * through @northflank/js-client only. Either the service was created for it
 * (ephemeral: `ownedByClient`, deleted on release) or it is an instance of
 * an attached service held under a lease (never deleted, never paused: its
 * workspace is emptied and the lease dropped on release, once).
 *
 * Commands run under the exec shim (providers/remote/exec-shim.ts, through
 * ShimmedSandbox) over the SDK's exec session: exact env and cwd, its own
 * network namespace, deadline and output caps applied in the instance, both
 * streams base64-encoded; the shared supervision applies them on this side
 * too, and ends a command by closing its socket. Workspaces move as tar over
 * the same sessions (providers/remote/tar-over-exec.ts), validated on the
 * worker.
 */
import type { Readable } from "node:stream";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import type { PackOptions } from "../archive/index.js";
import { ShimmedSandbox, type RunOptions } from "../remote/shimmed-sandbox.js";
import { getArchiveOverExec, putArchiveOverExec, type RawOutput } from "../remote/tar-over-exec.js";
import { translateError } from "./errors.js";
import type { Lease } from "./lease.js";
import type { NorthflankProvider } from "./northflank-provider.js";

export class NorthflankSandbox extends ShimmedSandbox {
  private returned: Promise<void> | undefined;

  constructor(
    private readonly provider: NorthflankProvider,
    readonly serviceId: string,
    readonly instance: string,
    /** The ownership decision: true only for a service this provider created (and so may delete). */
    readonly ownedByClient: boolean,
    readonly lease?: Lease,
  ) {
    super(provider, ownedByClient ? serviceId : `${serviceId}/${instance}`);
  }

  /** One command in this instance, output as text (the shim's and tar-over-exec's are base64/ASCII). */
  protected async run(argv: string[], opts: RunOptions): Promise<RawOutput> {
    try {
      const r = await this.provider.api.session(this.serviceId, this.instance, argv, opts);
      return { stdout: r.stdout.toString("utf8"), stderr: r.stderr.toString("utf8"), exitCode: r.exitCode };
    } catch (err) {
      if (opts.signal?.aborted || this.released) throw err;
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

  /**
   * A service of our own is deleted; an attached instance is emptied and its
   * lease dropped, once (a shim that did not end in time and the release
   * both come here: the lease must not be dropped twice, or a second
   * cleaning could hit the next holder's job).
   */
  protected destroy(): Promise<void> {
    if (this.ownedByClient) return this.provider.deleteService(this.serviceId);
    this.returned ??= this.provider.returnInstance(this);
    return this.returned;
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
}
