/**
 * The superserve provider: one Superserve sandbox per job, created from a
 * template through @superserve/sdk (the only client: no request of the
 * service's protocol is made here by hand).
 *
 * - Ownership: the sandbox's metadata carries the ownership labels, so any
 *   worker's reaper finds it through the SDK's list call (filtered by
 *   metadata) and deletes those whose worker has no heartbeat.
 * - Idempotent create: a create token in the metadata; a create whose answer
 *   was lost (5xx, timeout, network) is looked up by it before it is sent
 *   again, and adopted when it exists.
 * - Warm reuse (SANDQUEUE_SUPERSERVE_PAUSE_ON_RELEASE): release cleans the
 *   workspace and pauses the sandbox instead of deleting it; the next acquire
 *   of its template reattaches with the seed's rules (`reattach`).
 */
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { NotFoundError, Sandbox as SdkSandbox, ConflictError } from "@superserve/sdk";
import { acquireAborted, throwIfAcquireAborted } from "../abort.js";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { DEFAULT_ARCHIVE_LIMITS, type ArchiveLimits } from "../archive/index.js";
import {
  LABEL_JOB,
  LABEL_MANAGED_BY,
  LABEL_WORKER,
  MANAGED_BY,
  labelSafe,
  type OwnerLiveness,
  type SandboxProvider,
  type SandboxSpec,
} from "../provider.js";
import { createWithToken } from "../remote/create-with-token.js";
import { ofDeadWorkers, removeEach } from "../remote/reap.js";
import { routeDataPlane, sdkDataPlaneOrigin } from "./data-plane-route.js";
import { DEFAULT_RATE_LIMIT_WAIT_MS, isRetryableSdkError, translateSdkError } from "./errors.js";
import { SuperserveSandbox } from "./superserve-sandbox.js";
import { SUPERSERVE_CAPABILITIES } from "./capabilities.js";

/** Metadata key of the create token (idempotent create). */
export const LABEL_CREATE = "sandqueue.io/create";
/** Egress the sandbox is created with: nothing out. */
const DENY_ALL_OUT = { denyOut: ["0.0.0.0/0"] };
/** Wipes what a job left before the sandbox is paused for the next one. */
const CLEAN_FOR_REUSE = 'find /workspace /tmp -mindepth 1 -delete 2>/dev/null; [ "$(id -u)" = 0 ] || kill -9 -1 2>/dev/null; true';


export interface SuperserveProviderOptions {
  apiKey: string;
  /** Control plane; unset: the SDK's default (by the key's region). */
  baseUrl?: string;
  /** Where the SDK's data-plane host is reached instead (a stand-in, a private deployment). */
  dataPlaneUrl?: string;
  /** Job image -> template; unmapped images are template names. */
  templates: Record<string, string>;
  /** The worker id: the owner label on every sandbox. */
  owner: string;
  createTimeoutMs: number;
  createRetries: number;
  resumeTimeoutMs: number;
  /** Pause released sandboxes for reuse instead of deleting them. */
  pauseOnRelease: boolean;
  /** Most paused sandboxes kept per template. */
  warmMax: number;
  /** The service deletes a sandbox paused this long (auto_delete_seconds). */
  pausedTtlSeconds: number;
  archiveLimits?: ArchiveLimits;
}

/** What `reattach` found and did, for tests and logs. */
export type ReattachOutcome = "ready" | "resumed" | "recreate";

export class SuperserveProvider implements SandboxProvider {
  readonly name = "superserve";
  readonly capabilities = SUPERSERVE_CAPABILITIES;
  readonly archiveLimits: ArchiveLimits;
  readonly conn: { apiKey: string; baseUrl?: string };
  private readonly ownerLabel: string;
  private readonly live = new Set<SuperserveSandbox>();
  private readonly warm = new Map<string, SdkSandbox[]>();
  private closed = false;
  /** Releases being cleaned and paused for the pool right now (close waits for them). */
  private readonly parking = new Set<Promise<void>>();

  constructor(private readonly opts: SuperserveProviderOptions) {
    this.conn = { apiKey: opts.apiKey, ...(opts.baseUrl ? { baseUrl: opts.baseUrl } : {}) };
    this.ownerLabel = labelSafe(opts.owner);
    this.archiveLimits = opts.archiveLimits ?? DEFAULT_ARCHIVE_LIMITS;
    if (opts.dataPlaneUrl) routeDataPlane(sdkDataPlaneOrigin(opts.apiKey, opts.baseUrl), opts.dataPlaneUrl);
  }

  templateFor(image: string): string {
    return this.opts.templates[image] ?? image;
  }

  /** Paused sandboxes kept for reuse, per template. */
  readySandboxes(): Record<string, number> {
    return Object.fromEntries([...this.warm].map(([t, l]) => [t, l.length]));
  }

  async acquire(spec: SandboxSpec, opts: { signal?: AbortSignal } = {}): Promise<SuperserveSandbox> {
    const { signal } = opts;
    if (this.closed) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "superserve provider is closed", { retryable: true });
    if (spec.network === "proxy") {
      throw new ProviderError(ErrorCodes.CAPABILITY_UNSUPPORTED, "the superserve provider has no way to the worker's egress proxy (capability networkPolicy)", { retryable: false });
    }
    throwIfAcquireAborted(signal, "superserve");
    const template = this.templateFor(spec.image);
    const metadata: Record<string, string> = { ...spec.labels, [LABEL_WORKER]: spec.labels[LABEL_WORKER] ?? this.ownerLabel, [LABEL_MANAGED_BY]: MANAGED_BY };
    const timeoutSeconds = Math.ceil(spec.maxLifetimeMs / 1000);
    const sdk = (await this.fromWarm(template, metadata, timeoutSeconds, signal)) ?? (await this.create(spec.image, template, metadata, timeoutSeconds, signal));
    if (signal?.aborted) {
      await this.destroy(sdk).catch(() => undefined);
      throw acquireAborted(signal, "superserve");
    }
    const box = new SuperserveSandbox(this, sdk, template);
    this.live.add(box);
    return box;
  }

  private async create(image: string, template: string, metadata: Record<string, string>, timeoutSeconds: number, signal?: AbortSignal): Promise<SdkSandbox> {
    const token = randomUUID();
    const job = metadata[LABEL_JOB];
    const name = `sandqueue-${job ? `${job.slice(0, 40)}-` : ""}${token.slice(0, 8)}`;
    const op = `create sandbox from template ${template}`;
    const notFound = () =>
      new ProviderError(ErrorCodes.IMAGE_NOT_FOUND, `superserve: no template "${template}" for image "${image}" (SANDQUEUE_SUPERSERVE_TEMPLATES maps images to templates)`, {
        retryable: false,
      });
    return createWithToken({
      provider: "superserve",
      op,
      retries: this.opts.createRetries,
      timeoutMs: this.opts.createTimeoutMs,
      signal,
      create: (signal) =>
        SdkSandbox.create({
          ...this.conn,
          name,
          fromTemplate: template,
          metadata: { ...metadata, [LABEL_CREATE]: token },
          network: DENY_ALL_OUT,
          timeoutSeconds,
          autoDeleteSeconds: this.opts.pausedTtlSeconds,
          signal,
        }),
      findByToken: () => this.findByToken(token),
      adopt: (id) => SdkSandbox.connect(id, this.conn).catch((e: unknown) => Promise.reject(translateSdkError(e, `${op}: adopt ${id}`))),
      removeByToken: () => this.deleteByToken(token),
      isRetryable: isRetryableSdkError,
      translate: (err, what) => translateSdkError(err, what, notFound),
      rateLimitWaitMs: DEFAULT_RATE_LIMIT_WAIT_MS,
    });
  }

  private async findByToken(token: string): Promise<string | undefined> {
    const found = await SdkSandbox.list({ ...this.conn, metadata: { [LABEL_CREATE]: token } });
    return found[0]?.id;
  }

  private async deleteByToken(token: string): Promise<void> {
    const id = await this.findByToken(token).catch(() => undefined);
    if (id) await SdkSandbox.killById(id, this.conn).catch(() => undefined);
  }

  /** A paused sandbox of this template, reattached by the seed's rules and relabelled for this job; undefined when none is usable. */
  private async fromWarm(template: string, metadata: Record<string, string>, timeoutSeconds: number, signal?: AbortSignal): Promise<SdkSandbox | undefined> {
    const list = this.warm.get(template);
    while (list?.length) {
      const sdk = list.shift()!;
      try {
        const outcome = await this.reattach(sdk, signal);
        if (outcome === "recreate") continue;
        await sdk.update({ metadata: { ...metadata, [LABEL_CREATE]: randomUUID() }, timeoutSeconds });
        return sdk;
      } catch {
        // Not usable (resume timed out, update refused...): it goes, and the next one is tried.
        await this.destroy(sdk).catch(() => undefined);
        throwIfAcquireAborted(signal, "superserve");
      }
    }
    return undefined;
  }

  /**
   * The seed's reattach rules, from the sandbox's status: `active` is ready;
   * `paused` is resumed (the access token rotates) and `resuming` waited
   * for, polling until `active`; `failed`, `deleted`, gone or any other
   * status means recreate (the sandbox is deleted, best effort). `pausing`
   * and `starting` are transitions: polled until they settle.
   */
  async reattach(sdk: SdkSandbox, signal?: AbortSignal): Promise<ReattachOutcome> {
    const until = performance.now() + this.opts.resumeTimeoutMs;
    let resumed = false;
    for (let delay = 25; ; delay = Math.min(delay * 2, 500)) {
      throwIfAcquireAborted(signal, "superserve");
      let status: string;
      try {
        status = String((await sdk.getInfo()).status);
      } catch (err) {
        if (err instanceof NotFoundError) return "recreate";
        throw translateSdkError(err, `reattach sandbox ${sdk.id}`);
      }
      if (status === "active") return resumed ? "resumed" : "ready";
      if (status === "paused") {
        try {
          await sdk.resume();
          resumed = true;
          continue;
        } catch (err) {
          // Another resume won the race (409): poll on.
          if (!(err instanceof ConflictError)) throw translateSdkError(err, `resume sandbox ${sdk.id}`);
        }
      } else if (status === "resuming" || status === "pausing" || status === "starting") {
        resumed ||= status === "resuming";
      } else {
        await SdkSandbox.killById(sdk.id, this.conn).catch(() => undefined);
        return "recreate";
      }
      if (performance.now() > until) {
        throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `superserve sandbox ${sdk.id} is still ${status} after ${this.opts.resumeTimeoutMs} ms`, { retryable: true });
      }
      await sleep(delay);
    }
  }

  /** Adds a known sandbox to the reuse pool (a restarted worker's paused sandbox, tests). */
  adoptPaused(sdk: SdkSandbox, template: string): void {
    this.warmList(template).push(sdk);
  }

  forget(box: SuperserveSandbox): void {
    this.live.delete(box);
  }

  /** Release with warm reuse: clean, pause, keep; anything failing (or a full pool, or a closed provider) deletes it. */
  async park(box: SuperserveSandbox): Promise<void> {
    const list = this.warmList(box.template);
    // Counted while it is cleaned and paused, so concurrent releases do not overfill the pool.
    if (!this.opts.pauseOnRelease || this.closed || list.length + this.parking.size >= this.opts.warmMax) return this.destroy(box.sdk);
    const parked = (async () => {
      try {
        await box.sdk.commands.run(CLEAN_FOR_REUSE, { timeoutMs: 30_000 });
        await box.sdk.pause();
      } catch {
        return this.destroy(box.sdk);
      }
      // Closed meanwhile: close() has emptied the pool already, so this one goes now.
      if (this.closed) return this.destroy(box.sdk);
      list.push(box.sdk);
    })();
    this.parking.add(parked);
    try {
      await parked;
    } finally {
      this.parking.delete(parked);
    }
  }

  /** The pool list of a template, made and stored at once (concurrent parks share it). */
  private warmList(template: string): SdkSandbox[] {
    let list = this.warm.get(template);
    if (!list) {
      list = [];
      this.warm.set(template, list);
    }
    return list;
  }

  /** Deletes a sandbox (404 counts as done), retrying what the SDK did not. */
  async destroy(sdk: SdkSandbox): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await sdk.kill();
        return;
      } catch (err) {
        if (attempt >= 3 || !isRetryableSdkError(err)) throw translateSdkError(err, `delete sandbox ${sdk.id}`);
        await sleep(200 * 2 ** attempt);
      }
    }
  }

  async check(): Promise<void> {
    try {
      await SdkSandbox.list({ ...this.conn, metadata: { [LABEL_WORKER]: this.ownerLabel }, signal: AbortSignal.timeout(15_000) });
    } catch (err) {
      throw translateSdkError(err, "list sandboxes (readiness)");
    }
  }

  /**
   * Deletes sandboxes whose worker is known dead (no heartbeat), found through
   * the SDK's list call by the managed-by label. This worker's own are never
   * touched; sandboxes without a worker label are left alone.
   */
  async reap(owners?: OwnerLiveness): Promise<number> {
    if (!owners) return 0;
    let all;
    try {
      all = await SdkSandbox.list({ ...this.conn, metadata: { [LABEL_MANAGED_BY]: MANAGED_BY } });
    } catch (err) {
      throw translateSdkError(err, "list sandboxes (reaper)");
    }
    const doomed = await ofDeadWorkers(all, (s) => s.metadata[LABEL_WORKER], this.ownerLabel, owners);
    return removeEach(doomed, (s) => SdkSandbox.killById(s.id, this.conn));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const paused = [...this.warm.values()].flat();
    // Releases still parking see `closed` and delete their sandbox themselves.
    await Promise.allSettled([...this.parking]);
    this.warm.clear();
    await Promise.allSettled([...[...this.live].map((b) => b.release()), ...paused.map((s) => this.destroy(s))]);
  }
}
