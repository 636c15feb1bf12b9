/**
 * The e2b provider: one E2B sandbox per job, created from a template through
 * the official `e2b` SDK (the only client: no request of the service's
 * protocols, REST or envd's Connect RPC, is made here by hand).
 *
 * - Ownership: the sandbox's metadata carries the ownership labels, so any
 *   worker's reaper finds it through the SDK's list call (`Sandbox.list`
 *   with a metadata query) and kills those whose worker has no heartbeat.
 * - Lifetime: created with `timeoutMs` = the job's maximum lifetime, so
 *   the service kills a sandbox its worker forgot; killed on release.
 * - Idempotent create: a create token in the metadata; a create whose answer
 *   was lost (5xx, timeout, network) is looked up by it before it is sent
 *   again, and adopted (`Sandbox.connect`) when it exists.
 * - Warm pool (off unless `pool.minIdle` > 0: a waiting sandbox is billed):
 *   sandboxes created ahead per template, with the owner labels and a
 *   pool timeout; a job that takes one has the service's timeout set to its
 *   own lifetime beside its first command, off its critical path.
 */
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Sandbox as SdkSandbox, type SandboxInfo, type SandboxListOpts } from "e2b";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { acquireAborted, throwIfAcquireAborted } from "../abort.js";
import { DEFAULT_ARCHIVE_LIMITS, type ArchiveLimits } from "../archive/index.js";
import { LABEL_MANAGED_BY, LABEL_WORKER, MANAGED_BY, labelSafe, type OwnerLiveness, type SandboxProvider, type SandboxSpec } from "../provider.js";
import { createWithToken } from "../remote/create-with-token.js";
import { ofDeadWorkers, removeEach } from "../remote/reap.js";
import { E2B_CAPABILITIES } from "./capabilities.js";
import { DEFAULT_RATE_LIMIT_WAIT_MS, isRetryableSdkError, translateSdkError } from "./errors.js";
import { E2bSandbox } from "./e2b-sandbox.js";
import { WarmPool, type WarmPoolOptions } from "../warm-pool.js";

/** Metadata key of the create token (idempotent create). */
export const LABEL_CREATE = "sandqueue.io/create";
/** Metadata key marking a sandbox created for the warm pool (it has no job label). */
export const LABEL_POOLED = "sandqueue.io/pooled";
/** The longest sandbox timeout E2B accepts (24 h, Pro plans). */
const MAX_SANDBOX_TIMEOUT_MS = 86_400_000;
/** Timeout of a sandbox waiting in the pool (the service ends it if this worker forgets it). */
const POOLED_TIMEOUT_MS = 900_000;
/** A pooled sandbox older than this is not handed out: the service may end it under the job. */
const POOLED_MAX_AGE_MS = POOLED_TIMEOUT_MS - 120_000;

interface PooledSandbox {
  id: string;
  sdk: SdkSandbox;
  createdAt: number;
}

export interface E2bProviderOptions {
  apiKey: string;
  /** The service's domain; unset: the SDK's (E2B_DOMAIN or e2b.app). */
  domain?: string;
  /** Control plane instead of https://api.<domain>. */
  apiUrl?: string;
  /** One URL for every sandbox's envd (the sandbox named by header). */
  sandboxUrl?: string;
  /** Template of jobs on the default image ("host"); other images are template names. */
  template: string;
  /** The worker id: the owner label on every sandbox. */
  owner: string;
  createTimeoutMs: number;
  createRetries: number;
  requestTimeoutMs: number;
  archiveLimits?: ArchiveLimits;
  /** Warm pool per template; unset or `{minIdle: 0}`: every job creates its sandbox. */
  pool?: WarmPoolOptions;
}

/** The SDK's connection options every call gets. */
export interface E2bConnection {
  apiKey: string;
  domain?: string;
  apiUrl?: string;
  sandboxUrl?: string;
  requestTimeoutMs: number;
  /** Always false: E2B_DEBUG=true in the worker's environment would make the SDK fake creates against localhost. */
  debug: false;
}

/** Every sandbox the SDK's list call shows for a metadata query (all pages). */
export async function listSandboxes(conn: E2bConnection, metadata: Record<string, string>, signal?: AbortSignal): Promise<SandboxInfo[]> {
  const opts: SandboxListOpts = { ...conn, query: { metadata } };
  const pages = SdkSandbox.list(opts);
  const out: SandboxInfo[] = [];
  while (pages.hasNext) out.push(...(await pages.nextItems(signal ? { signal } : {})));
  return out;
}

export class E2bProvider implements SandboxProvider {
  readonly name = "e2b";
  readonly capabilities = E2B_CAPABILITIES;
  readonly archiveLimits: ArchiveLimits;
  readonly conn: E2bConnection;
  private readonly ownerLabel: string;
  private readonly live = new Set<E2bSandbox>();
  readonly pool: WarmPool<PooledSandbox>;
  private closed = false;

  constructor(private readonly opts: E2bProviderOptions) {
    this.conn = {
      apiKey: opts.apiKey,
      ...(opts.domain ? { domain: opts.domain } : {}),
      ...(opts.apiUrl ? { apiUrl: opts.apiUrl } : {}),
      ...(opts.sandboxUrl ? { sandboxUrl: opts.sandboxUrl } : {}),
      requestTimeoutMs: opts.requestTimeoutMs,
      debug: false,
    };
    this.ownerLabel = labelSafe(opts.owner);
    this.archiveLimits = opts.archiveLimits ?? DEFAULT_ARCHIVE_LIMITS;
    this.pool = new WarmPool<PooledSandbox>(
      opts.pool ?? { minIdle: 0, maxSize: 0 },
      async (t) => {
        const template = t as string;
        const metadata = { [LABEL_WORKER]: this.ownerLabel, [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_POOLED]: "true" };
        const sdk = await this.create(template, template, metadata, POOLED_TIMEOUT_MS);
        return { id: sdk.sandboxId, sdk, createdAt: Date.now() };
      },
      (m) => this.destroy(m.id),
    );
  }

  templateFor(image: string): string {
    return image === "host" ? this.opts.template : image;
  }

  async acquire(spec: SandboxSpec, opts: { signal?: AbortSignal } = {}): Promise<E2bSandbox> {
    const { signal } = opts;
    if (this.closed) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "e2b provider is closed", { retryable: true });
    if (spec.network === "proxy") {
      throw new ProviderError(ErrorCodes.CAPABILITY_UNSUPPORTED, "the e2b provider has no way to the worker's egress proxy (capability networkPolicy)", { retryable: false });
    }
    throwIfAcquireAborted(signal, "e2b");
    const template = this.templateFor(spec.image);
    const timeoutMs = Math.min(spec.maxLifetimeMs, MAX_SANDBOX_TIMEOUT_MS);
    const pooled = await this.takePooled(template, signal);
    let sdk: SdkSandbox;
    if (pooled) {
      sdk = pooled.sdk;
      // Beside the job's first command: a sandbox gone meanwhile shows there (SANDBOX_LOST, retried).
      void sdk.setTimeout(timeoutMs).catch(() => undefined);
    } else {
      const metadata: Record<string, string> = { ...spec.labels, [LABEL_WORKER]: spec.labels[LABEL_WORKER] ?? this.ownerLabel, [LABEL_MANAGED_BY]: MANAGED_BY };
      sdk = await this.create(spec.image, template, metadata, timeoutMs, signal);
    }
    if (signal?.aborted) {
      await this.destroy(sdk.sandboxId).catch(() => undefined);
      throw acquireAborted(signal, "e2b");
    }
    const box = new E2bSandbox(this, sdk);
    this.live.add(box);
    return box;
  }

  /** A pooled sandbox young enough for a job, or undefined (the caller creates one). */
  private async takePooled(template: string, signal?: AbortSignal): Promise<PooledSandbox | undefined> {
    for (;;) {
      const m = await this.pool.take(template, template, signal);
      if (!m || Date.now() - m.createdAt < POOLED_MAX_AGE_MS) return m;
      void this.destroy(m.id).catch(() => undefined);
    }
  }

  /** Starts filling the pool for an image before its first job (the limits are the template's: not part of the key). */
  prewarm(spec: Pick<SandboxSpec, "image" | "limits">): void {
    const template = this.templateFor(spec.image);
    this.pool.register(template, template);
  }

  readySandboxes(): Record<string, number> {
    return Object.fromEntries(this.pool.idleByKey());
  }

  private async create(image: string, template: string, metadata: Record<string, string>, timeoutMs: number, signal?: AbortSignal): Promise<SdkSandbox> {
    const token = randomUUID();
    const op = `create sandbox from template ${template}`;
    const notFound = () =>
      new ProviderError(ErrorCodes.IMAGE_NOT_FOUND, `e2b: no template "${template}" for image "${image}" (SANDQUEUE_E2B_TEMPLATE names the default image's)`, {
        retryable: false,
      });
    return createWithToken({
      provider: "e2b",
      op,
      retries: this.opts.createRetries,
      timeoutMs: this.opts.createTimeoutMs,
      signal,
      create: (signal) =>
        SdkSandbox.create(template, {
          ...this.conn,
          metadata: { ...metadata, [LABEL_CREATE]: token },
          timeoutMs,
          allowInternetAccess: false,
          requestTimeoutMs: this.opts.createTimeoutMs,
          signal,
        }),
      findByToken: () => this.findByToken(token),
      adopt: (id) => SdkSandbox.connect(id, this.conn).catch((e: unknown) => Promise.reject(translateSdkError(e, `${op}: adopt ${id}`))),
      removeByToken: () => this.killByToken(token),
      isRetryable: isRetryableSdkError,
      translate: (err, what) => translateSdkError(err, what, notFound),
      rateLimitWaitMs: DEFAULT_RATE_LIMIT_WAIT_MS,
    });
  }

  private async findByToken(token: string): Promise<string | undefined> {
    return (await listSandboxes(this.conn, { [LABEL_CREATE]: token }))[0]?.sandboxId;
  }

  private async killByToken(token: string): Promise<void> {
    const id = await this.findByToken(token).catch(() => undefined);
    if (id) await SdkSandbox.kill(id, this.conn).catch(() => undefined);
  }

  forget(box: E2bSandbox): void {
    this.live.delete(box);
  }

  /** Kills a sandbox (gone already counts as done: the SDK answers false), retrying 429/5xx/network errors. */
  async destroy(id: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await SdkSandbox.kill(id, this.conn);
        return;
      } catch (err) {
        if (attempt >= 3 || !isRetryableSdkError(err)) throw translateSdkError(err, `kill sandbox ${id}`);
        await sleep(200 * 2 ** attempt);
      }
    }
  }

  async check(): Promise<void> {
    try {
      await listSandboxes(this.conn, { [LABEL_WORKER]: this.ownerLabel }, AbortSignal.timeout(15_000));
    } catch (err) {
      throw translateSdkError(err, "list sandboxes (readiness)");
    }
  }

  /**
   * Kills sandboxes whose worker is known dead (no heartbeat), found through
   * the SDK's list call by the managed-by label. This worker's own are never
   * touched; sandboxes without a worker label are left alone.
   */
  async reap(owners?: OwnerLiveness): Promise<number> {
    if (!owners) return 0;
    let all: SandboxInfo[];
    try {
      all = await listSandboxes(this.conn, { [LABEL_MANAGED_BY]: MANAGED_BY });
    } catch (err) {
      throw translateSdkError(err, "list sandboxes (reaper)");
    }
    const doomed = await ofDeadWorkers(all, (s) => s.metadata[LABEL_WORKER], this.ownerLabel, owners);
    return removeEach(doomed, (s) => SdkSandbox.kill(s.sandboxId, this.conn));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([this.pool.drain(), ...[...this.live].map((b) => b.release())]);
  }
}
