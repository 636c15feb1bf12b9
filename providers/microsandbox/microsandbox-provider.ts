/**
 * MicrosandboxProvider: one sandbox (a microVM) per job on a microsandbox
 * server (0.2.x msbserver), through its JSON-RPC API. See docs/PROVIDERS.md.
 *
 * - acquire: `sandbox.start` under a name derived from the owner, job id
 *   and attempt (providers/remote/sandbox-names.ts); starting a running
 *   name again leaves it as it is, so a retried create makes one sandbox.
 * - exec: `sandbox.command.run` of the exec shim (providers/remote/exec-shim.ts):
 *   exact env and cwd, byte-exact separate streams, deadline and output cap
 *   enforced in the sandbox and, behind them, by deleting the sandbox.
 * - archives: tar as base64 over command.run (providers/remote/tar-over-exec.ts).
 * - release: `sandbox.stop`. reap: `sandbox.metrics.get` of the namespace,
 *   then stop every sandbox whose owner has no heartbeat.
 */
import type { Readable } from "node:stream";
import { acquireAborted, throwIfAcquireAborted } from "../abort.js";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { DEFAULT_ARCHIVE_LIMITS, type ArchiveLimits } from "../archive/index.js";
import type { OwnerLiveness, ProviderCapabilities, Sandbox, SandboxProvider, SandboxSpec } from "../provider.js";
import { ShimmedSandbox, type RunOptions } from "../remote/shimmed-sandbox.js";
import { namesOfDeadOwners, ownerTag, ownerTagOf, sandboxName } from "../remote/sandbox-names.js";
import type { RawOutput } from "../remote/tar-over-exec.js";
import { microsandboxDefinition } from "./definition.js";
import { MsbRpcClient, MsbRpcError } from "./rpc-client.js";

export const NAME_PREFIX = "sq";

export interface MicrosandboxProviderOptions {
  url: string;
  apiKey?: string | undefined;
  namespace: string;
  cpus: number;
  requestTimeoutMs: number;
  retries: number;
  /** Worker id: its hash is in every sandbox name (the reaper's owner). */
  owner: string;
  archiveLimits?: ArchiveLimits;
  /** First backoff after a retryable failure, ms (tests shorten it). */
  backoffMs?: number;
}

interface CommandResult {
  exit_code: number;
  success: boolean;
  output: Array<{ stream: string; text: string }>;
}

interface Metrics {
  sandboxes: Array<{ namespace: string; name: string; running: boolean }>;
}

/** Messages of the server that mean "no such sandbox". */
const GONE = /not found|not running|no longer running|does not exist/i;

export class MicrosandboxProvider implements SandboxProvider {
  readonly name = "microsandbox";
  readonly capabilities: ProviderCapabilities = microsandboxDefinition.capabilities;
  readonly rpc: MsbRpcClient;
  readonly namespace: string;
  private readonly ownTag: string;
  private readonly live = new Set<ShimmedSandbox>();
  private closing: Promise<void> | undefined;

  constructor(readonly opts: MicrosandboxProviderOptions) {
    this.rpc = new MsbRpcClient({
      baseUrl: opts.url,
      apiKey: opts.apiKey,
      timeoutMs: opts.requestTimeoutMs,
      retries: opts.retries,
      ...(opts.backoffMs === undefined ? {} : { backoffMs: opts.backoffMs }),
    });
    this.namespace = opts.namespace;
    this.ownTag = ownerTag(opts.owner);
  }

  async acquire(spec: SandboxSpec, opts: { signal?: AbortSignal }): Promise<Sandbox> {
    if (this.closing) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "microsandbox provider is closing", { retryable: true });
    throwIfAcquireAborted(opts.signal);
    const name = sandboxName(NAME_PREFIX, this.opts.owner, spec);
    const params = {
      sandbox: name,
      namespace: this.namespace,
      config: { image: spec.image, memory: spec.limits.memoryMb, cpus: this.opts.cpus },
    };
    try {
      await this.rpc.call("sandbox.start", params, opts.signal ? { signal: opts.signal } : {});
    } catch (err) {
      // Whatever the server made of it, nothing of this name may stay behind.
      await this.stopSandbox(name).catch(() => undefined);
      if (opts.signal?.aborted) throw acquireAborted(opts.signal);
      if (err instanceof MsbRpcError && /image|pull/i.test(err.message)) {
        throw new ProviderError(ErrorCodes.IMAGE_NOT_FOUND, `microsandbox: image '${spec.image}' could not be started: ${err.message}`, { retryable: false, cause: err });
      }
      throw err;
    }
    if (opts.signal?.aborted) {
      await this.stopSandbox(name).catch(() => undefined);
      throw acquireAborted(opts.signal);
    }
    const box = new MicrosandboxSandbox(this, name, this.opts.archiveLimits ?? DEFAULT_ARCHIVE_LIMITS);
    this.live.add(box);
    return box;
  }

  /** `sandbox.stop`; a sandbox already gone counts as stopped. */
  async stopSandbox(name: string): Promise<void> {
    try {
      await this.rpc.call("sandbox.stop", { sandbox: name, namespace: this.namespace });
    } catch (err) {
      if (err instanceof MsbRpcError && GONE.test(err.message)) return;
      throw err;
    }
  }

  /** Names of the sandboxes in our namespace (the service's own list). */
  async list(): Promise<string[]> {
    const m = await this.rpc.call<Metrics>("sandbox.metrics.get", { namespace: this.namespace });
    return m.sandboxes.filter((s) => s.namespace === this.namespace).map((s) => s.name);
  }

  /** Our sandboxes: those of this provider's owner. */
  async ownSandboxes(): Promise<string[]> {
    return (await this.list()).filter((n) => ownerTagOf(NAME_PREFIX, n) === this.ownTag);
  }

  async exists(name: string): Promise<boolean> {
    const m = await this.rpc.call<Metrics>("sandbox.metrics.get", { namespace: this.namespace, sandbox: name });
    return m.sandboxes.some((s) => s.name === name);
  }

  async check(): Promise<void> {
    await this.rpc.health();
    await this.list();
  }

  async reap(owners?: OwnerLiveness): Promise<number> {
    const doomed = await namesOfDeadOwners(NAME_PREFIX, this.ownTag, await this.list(), owners);
    for (const n of doomed) await this.stopSandbox(n);
    return doomed.length;
  }

  /** @internal */
  forget(box: ShimmedSandbox): void {
    this.live.delete(box);
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.allSettled([...this.live].map((b) => b.release()));
    })();
    return this.closing;
  }
}

class MicrosandboxSandbox extends ShimmedSandbox {
  constructor(
    private readonly provider: MicrosandboxProvider,
    id: string,
    protected readonly archiveLimits: ArchiveLimits,
  ) {
    super(provider, id);
  }

  /** command.run of argv; a call that fails on a sandbox that no longer exists is SANDBOX_LOST. */
  protected async run(argv: string[], opts: RunOptions): Promise<RawOutput> {
    const [command, ...args] = argv;
    try {
      const r = await this.provider.rpc.call<CommandResult>(
        "sandbox.command.run",
        // command.run takes no timeout (SandboxCommandRunParams): the shim and our own deadline are the limits.
        { sandbox: this.id, namespace: this.provider.namespace, command, args },
        // Not idempotent: never sent twice but on a 429 (refused before it ran).
        { timeoutMs: opts.timeoutMs + 5_000, idempotent: false, ...(opts.signal ? { signal: opts.signal } : {}) },
      );
      const text = (stream: string): string =>
        r.output
          .filter((o) => o.stream === stream)
          .map((o) => o.text)
          .join("\n");
      return { stdout: text("stdout"), stderr: text("stderr"), exitCode: r.exit_code };
    } catch (err) {
      if (opts.signal?.aborted || this.released) throw err;
      const gone = await this.provider.exists(this.id).then(
        (e) => !e,
        () => false,
      );
      if (gone) {
        this.lost = true;
        throw new ProviderError(ErrorCodes.SANDBOX_LOST, `microsandbox: sandbox ${this.id} disappeared during a command`, { retryable: true, cause: err });
      }
      throw err;
    }
  }

  protected destroy(): Promise<void> {
    return this.provider.stopSandbox(this.id);
  }
}
