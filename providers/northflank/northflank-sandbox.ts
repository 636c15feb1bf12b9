/**
 * One sandbox on Northflank: an instance (container) of a service, driven
 * through @northflank/js-client only. Either the service was created for it
 * (ephemeral: `ownedByClient`, deleted on release) or it is an instance of
 * an attached service held under a lease (never deleted, never paused: its
 * workspace is emptied and the lease dropped on release, once).
 *
 * Commands go through the SDK's exec session, base64-encoded both ways.
 * On an instance whose only interface is lo (checked by the first command,
 * command.ts) a command runs directly: exit status from the SDK's command
 * result, output streamed into the shared supervision, which applies the
 * deadline, caps and aborts and ends a command by closing its socket.
 * Elsewhere it runs under the exec shim (providers/remote/exec-shim.ts,
 * through ShimmedSandbox), which cuts the network in the instance (or
 * refuses to run) and applies deadline and caps there too. Workspaces move as tar over
 * the same sessions (providers/remote/tar-over-exec.ts), validated on the
 * worker.
 */
import type { Readable } from "node:stream";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import type { ArchiveLimits } from "../archive/index.js";
import { ExecSupervision, notRunResult } from "../exec-supervision.js";
import type { ExecRequest, ExecResult } from "../provider.js";
import { ShimmedSandbox, type RunOptions } from "../remote/shimmed-sandbox.js";
import type { RawOutput } from "../remote/tar-over-exec.js";
import { NOT_ISOLATED_MARK, NOT_ISOLATED_STATUS, directExec } from "./command.js";
import { translateError } from "./errors.js";
import type { Lease } from "./lease.js";
import type { NorthflankProvider } from "./northflank-provider.js";

/** The service's own end of a direct command may come this long after our deadline before we give up on it. */
const DIRECT_GRACE_MS = 10_000;

export class NorthflankSandbox extends ShimmedSandbox {
  private returned: Promise<void> | undefined;
  /** How commands run here: found out by the first one. */
  private path: "unknown" | "direct" | "shim" = "unknown";
  private readonly closing = new AbortController();

  constructor(
    private readonly provider: NorthflankProvider,
    readonly serviceId: string,
    readonly instance: string,
    /** The ownership decision: true only for a service this provider created (and so may delete). */
    readonly ownedByClient: boolean,
    readonly lease?: Lease,
  ) {
    super(provider, ownedByClient ? serviceId : `${serviceId}/${instance}`);
    if (provider.opts.exec === "shim") this.path = "shim";
  }

  override async exec(req: ExecRequest): Promise<ExecResult> {
    if (this.released) this.ensureLive("exec");
    if (req.signal?.aborted) return notRunResult();
    this.ensureLive("exec");
    if (this.path === "shim") return super.exec(req);
    const r = await this.execDirect(req);
    if (r !== null) return r;
    this.path = "shim";
    return super.exec(req);
  }

  /** A direct command; null when the first one found the network not cut (nothing of the job ran). */
  private async execDirect(req: ExecRequest): Promise<ExecResult | null> {
    if (req.stdin !== undefined) {
      throw new ProviderError(ErrorCodes.CAPABILITY_UNSUPPORTED, "the northflank provider cannot feed stdin to a command (capability stdin)", { retryable: false });
    }
    const check = this.path === "unknown";
    const { argv, script } = directExec(req, check);
    const started = performance.now();
    const call = new AbortController();
    const sup = new ExecSupervision(req, { abortSignals: [this.closing.signal], kill: () => call.abort() });
    try {
      const out = await this.provider.api.session(this.serviceId, this.instance, argv, {
        timeoutMs: req.timeoutMs + DIRECT_GRACE_MS,
        signal: call.signal,
        stdin: script,
        onStdout: (b) => sup.stdout.push(b),
        onStderr: (b) => sup.stderr.push(b),
      });
      if (check && out.exitCode === NOT_ISOLATED_STATUS && out.stderr.toString() === NOT_ISOLATED_MARK) {
        sup.stop();
        return null;
      }
      this.path = "direct";
      return sup.result({ exitCode: sup.killed ? null : out.exitCode, signal: null });
    } catch (err) {
      if (sup.killed) return sup.result({ exitCode: null, signal: null });
      sup.stop();
      if (this.closing.signal.aborted) return notRunResult(started);
      throw await this.failure(err);
    }
  }

  override release(): Promise<void> {
    this.closing.abort();
    return super.release();
  }

  /** SANDBOX_LOST when the instance is gone; the SDK error translated otherwise. */
  private async failure(err: unknown): Promise<ProviderError> {
    if (!(await this.provider.instanceRunning(this.serviceId, this.instance).catch(() => true))) {
      this.lost = true;
      return new ProviderError(ErrorCodes.SANDBOX_LOST, `northflank: instance ${this.instance} of service ${this.serviceId} went away during a command`, {
        retryable: true,
        cause: err,
        details: { sandbox: this.id },
      });
    }
    return translateError(err, `exec in ${this.id}`);
  }

  /** One command in this instance, output as text (the shim's and tar-over-exec's are base64/ASCII). */
  protected async run(argv: string[], opts: RunOptions): Promise<RawOutput> {
    try {
      const r = await this.provider.api.session(this.serviceId, this.instance, argv, opts);
      return { stdout: r.stdout.toString("utf8"), stderr: r.stderr.toString("utf8"), exitCode: r.exitCode };
    } catch (err) {
      if (opts.signal?.aborted || this.released) throw err;
      throw await this.failure(err);
    }
  }

  protected get archiveLimits(): ArchiveLimits {
    return this.provider.archiveLimits;
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
}
