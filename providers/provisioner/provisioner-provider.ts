/**
 * ProvisionerProvider: one all-in-one (AIO) sandbox pod per job through
 * deer-flow's sandbox provisioner. See docs/PROVIDERS.md.
 *
 * - acquire: `POST /api/sandboxes {sandbox_id, thread_id}` under a name from
 *   owner, job id and attempt (the provisioner answers an existing id as it
 *   is: a create sent twice makes one sandbox), then readiness polls
 *   `GET {sandbox_url}/v1/sandbox` as deer-flow's backend does.
 * - exec: `POST {sandbox_url}/v1/bash/exec` of the exec shim
 *   (providers/remote/exec-shim.ts), envelope {success, message, data}.
 * - archives: `/v1/file/upload` and `/v1/file/download` carry the tar; a
 *   command extracts or packs it. Validated on the worker both ways.
 * - release: `DELETE /api/sandboxes/{id}`. reap: `GET /api/sandboxes`, then
 *   delete every sandbox whose owner has no heartbeat.
 */
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { abortedOr, acquireAborted, destroyOnAbort, guardPut, throwIfAcquireAborted, throwIfTransferAborted } from "../abort.js";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { DEFAULT_ARCHIVE_LIMITS, normalizeTar, readValidatedTar, type ArchiveLimits, type PackOptions } from "../archive/index.js";
import type { OwnerLiveness, ProviderCapabilities, Sandbox, SandboxProvider, SandboxSpec } from "../provider.js";
import { shellQuote } from "../request-script.js";
import { RemoteHttpClient, RemoteHttpError } from "../remote/http-client.js";
import { ShimmedSandbox, type RunOptions } from "../remote/shimmed-sandbox.js";
import { namesOfDeadOwners, ownerTag, ownerTagOf, sandboxName } from "../remote/sandbox-names.js";
import { CHECK_DIR, stagedTar, stepFailed, workspacePath, type RawOutput } from "../remote/tar-over-exec.js";
import { provisionerDefinition } from "./definition.js";

export const NAME_PREFIX = "sq";

export interface ProvisionerProviderOptions {
  url: string;
  apiKey?: string | undefined;
  sandboxApiKey?: string | undefined;
  /** Job images the provisioner's one image serves. */
  images: string[];
  requestTimeoutMs: number;
  retries: number;
  readyTimeoutMs: number;
  pollMs: number;
  owner: string;
  archiveLimits?: ArchiveLimits;
  backoffMs?: number;
}

interface SandboxResponse {
  sandbox_id: string;
  sandbox_url: string;
  status: string;
}

interface Envelope<T> {
  success: boolean;
  message?: string;
  data?: T;
}

interface BashExecResult {
  status?: string;
  stdout?: string;
  stderr?: string;
  exit_code?: number | null;
}

const STEP_TIMEOUT_MS = 120_000;

export class ProvisionerProvider implements SandboxProvider {
  readonly name = "provisioner";
  readonly capabilities: ProviderCapabilities = provisionerDefinition.capabilities;
  readonly http: RemoteHttpClient;
  private readonly ownTag: string;
  private readonly live = new Set<ShimmedSandbox>();
  private closing: Promise<void> | undefined;

  constructor(readonly opts: ProvisionerProviderOptions) {
    this.http = new RemoteHttpClient({
      service: "provisioner",
      baseUrl: opts.url,
      headers: opts.apiKey ? { "X-API-Key": opts.apiKey } : {},
      timeoutMs: opts.requestTimeoutMs,
      retries: opts.retries,
      ...(opts.backoffMs === undefined ? {} : { backoffMs: opts.backoffMs }),
    });
    this.ownTag = ownerTag(opts.owner);
  }

  /** A client of one sandbox's AIO API. */
  sandboxClient(url: string): RemoteHttpClient {
    return new RemoteHttpClient({
      service: "aio sandbox",
      baseUrl: url,
      headers: this.opts.sandboxApiKey ? { "X-AIO-API-Key": this.opts.sandboxApiKey } : {},
      timeoutMs: this.opts.requestTimeoutMs,
      retries: this.opts.retries,
      ...(this.opts.backoffMs === undefined ? {} : { backoffMs: this.opts.backoffMs }),
    });
  }

  async acquire(spec: SandboxSpec, opts: { signal?: AbortSignal }): Promise<Sandbox> {
    if (this.closing) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "provisioner provider is closing", { retryable: true });
    if (!this.opts.images.includes(spec.image)) {
      throw new ProviderError(
        ErrorCodes.IMAGE_NOT_FOUND,
        `provisioner: image '${spec.image}' is not served (it runs one image; SANDQUEUE_PROVISIONER_IMAGES=${this.opts.images.join(",")})`,
        { retryable: false },
      );
    }
    throwIfAcquireAborted(opts.signal);
    const id = sandboxName(NAME_PREFIX, this.opts.owner, spec);
    const signal = opts.signal ? { signal: opts.signal } : {};
    try {
      const res = await this.http.request({ method: "POST", path: "/api/sandboxes", json: { sandbox_id: id, thread_id: id }, op: `create sandbox ${id}`, ...signal });
      const info = res.json<SandboxResponse>();
      const aio = this.sandboxClient(info.sandbox_url);
      await this.waitReady(id, aio, opts.signal);
      const box = new ProvisionerSandbox(this, id, aio, this.opts.archiveLimits ?? DEFAULT_ARCHIVE_LIMITS);
      this.live.add(box);
      return box;
    } catch (err) {
      // Whatever the provisioner made of it, nothing of this id may stay behind.
      await this.deleteSandbox(id).catch(() => undefined);
      if (opts.signal?.aborted) throw acquireAborted(opts.signal);
      throw err;
    }
  }

  /** Polls GET {sandbox_url}/v1/sandbox (the pod's readiness probe) until it answers success. */
  private async waitReady(id: string, aio: RemoteHttpClient, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + this.opts.readyTimeoutMs;
    let last = "no answer yet";
    for (;;) {
      throwIfAcquireAborted(signal);
      try {
        const r = await aio.request({ method: "GET", path: "/v1/sandbox", accept: [404, 500, 502, 503, 504], timeoutMs: Math.min(5000, this.opts.requestTimeoutMs), op: "readiness", ...(signal ? { signal } : {}) });
        if (r.status === 200 && r.json<Envelope<unknown>>().success) return;
        last = `HTTP ${r.status}`;
      } catch (err) {
        if (signal?.aborted) throw acquireAborted(signal);
        if (err instanceof RemoteHttpError && err.code === ErrorCodes.PROVIDER_CREDENTIALS) throw err;
        last = (err as Error).message;
      }
      if (Date.now() >= deadline) {
        throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `provisioner: sandbox ${id} not ready within ${this.opts.readyTimeoutMs} ms (${last})`, { retryable: true });
      }
      await sleep(this.opts.pollMs, undefined, signal ? { signal } : {}).catch(() => undefined);
    }
  }

  async deleteSandbox(id: string): Promise<void> {
    await this.http.request({ method: "DELETE", path: `/api/sandboxes/${encodeURIComponent(id)}`, accept: [404], op: `delete sandbox ${id}` });
  }

  /** GET /api/sandboxes/{id}: its status, null when it is gone. */
  async status(id: string): Promise<string | null> {
    const r = await this.http.request({ method: "GET", path: `/api/sandboxes/${encodeURIComponent(id)}`, accept: [404], op: `get sandbox ${id}` });
    return r.status === 404 ? null : r.json<SandboxResponse>().status;
  }

  async list(): Promise<string[]> {
    const r = await this.http.request({ method: "GET", path: "/api/sandboxes", op: "list sandboxes" });
    return r.json<{ sandboxes: SandboxResponse[] }>().sandboxes.map((s) => s.sandbox_id);
  }

  async ownSandboxes(): Promise<string[]> {
    return (await this.list()).filter((n) => ownerTagOf(NAME_PREFIX, n) === this.ownTag);
  }

  async check(): Promise<void> {
    await this.http.request({ method: "GET", path: "/health", op: "health" });
    await this.list();
  }

  async reap(owners?: OwnerLiveness): Promise<number> {
    const doomed = await namesOfDeadOwners(NAME_PREFIX, this.ownTag, await this.list(), owners);
    for (const n of doomed) await this.deleteSandbox(n);
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

class ProvisionerSandbox extends ShimmedSandbox {
  constructor(
    private readonly provider: ProvisionerProvider,
    id: string,
    private readonly aio: RemoteHttpClient,
    protected readonly archiveLimits: ArchiveLimits,
  ) {
    super(provider, id);
  }

  /** A call that failed on a sandbox the provisioner no longer runs is SANDBOX_LOST. */
  private async lostOr(err: unknown, signal?: AbortSignal): Promise<never> {
    if (signal?.aborted || this.released) throw err;
    const status = await this.provider.status(this.id).catch(() => "unknown");
    if (status === null || (status !== "Running" && status !== "unknown")) {
      this.lost = true;
      throw new ProviderError(ErrorCodes.SANDBOX_LOST, `provisioner: sandbox ${this.id} is gone (status ${status ?? "404"})`, { retryable: true, cause: err });
    }
    throw err;
  }

  /** POST /v1/bash/exec of argv (shell-quoted); the envelope unwrapped. */
  protected async run(argv: string[], opts: RunOptions): Promise<RawOutput> {
    const seconds = Math.ceil(opts.timeoutMs / 1000);
    try {
      const res = await this.aio.request({
        method: "POST",
        path: "/v1/bash/exec",
        json: { command: argv.map(shellQuote).join(" "), timeout: seconds, hard_timeout: seconds },
        timeoutMs: opts.timeoutMs + 5_000,
        // Not idempotent: never sent twice but on a 429 (refused before it ran).
        idempotent: false,
        op: `bash/exec in ${this.id}`,
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      const env = res.json<Envelope<BashExecResult>>();
      if (!env.success || !env.data) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `aio sandbox ${this.id}: bash/exec: ${env.message ?? "failed"}`, { retryable: false });
      return { stdout: env.data.stdout ?? "", stderr: env.data.stderr ?? "", exitCode: env.data.exit_code ?? null };
    } catch (err) {
      return this.lostOr(err, opts.signal);
    }
  }

  protected destroy(): Promise<void> {
    return this.provider.deleteSandbox(this.id);
  }

  override async putArchive(dir: string, tar: Readable, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const { signal } = opts;
    const what = "putArchive";
    await guardPut(tar, what, signal, async () => {
      this.ensureLive(what);
      const abs = workspacePath(dir);
      const bytes = await readValidatedTar(tar, this.archiveLimits, what, signal);
      const file = stagedTar("put").path;
      const form = new FormData();
      form.append("file", new Blob([bytes]), "workspace.tar");
      form.append("path", file);
      await this.aio
        .request({ method: "POST", path: "/v1/file/upload", body: form, op: `upload to ${this.id}`, ...(signal ? { signal } : {}) })
        .catch((err: unknown) => this.lostOr(err, signal));
      const x = await this.run(["/bin/sh", "-c", `mkdir -p -- "$1" 2>/dev/null; ${CHECK_DIR}; tar -x -o -f "$2" -C "$1"; rc=$?; rm -f -- "$2"; exit $rc`, "sh", abs, file], {
        timeoutMs: STEP_TIMEOUT_MS,
        ...(signal ? { signal } : {}),
      });
      if (x.exitCode !== 0) throw stepFailed(what, dir, x);
    });
  }

  override async getArchive(dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
    const { signal, ...packOpts } = opts;
    const what = "getArchive";
    this.ensureLive(what);
    const abs = workspacePath(dir);
    throwIfTransferAborted(what, signal);
    const { name, path: file } = stagedTar("get");
    const withSignal = signal ? { signal } : {};
    try {
      const c = await this.run(["/bin/sh", "-c", `${CHECK_DIR}; tar -c -f "$2" --exclude="./$3" .`, "sh", abs, file, name], { timeoutMs: STEP_TIMEOUT_MS, ...withSignal });
      if (c.exitCode !== 0) throw stepFailed(what, dir, c);
      const res = await this.aio
        .request({ method: "GET", path: "/v1/file/download", query: { path: file }, op: `download from ${this.id}`, ...withSignal })
        .catch((err: unknown) => this.lostOr(err, signal));
      await this.run(["rm", "-f", "--", file], { timeoutMs: STEP_TIMEOUT_MS, ...withSignal });
      throwIfTransferAborted(what, signal);
      return destroyOnAbort(normalizeTar(Readable.from([res.body]), packOpts), what, signal);
    } catch (err) {
      throw abortedOr(err, what, signal);
    }
  }
}
