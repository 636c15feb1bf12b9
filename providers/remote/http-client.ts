/**
 * HTTP client shared by the providers of remote sandbox services
 * (microsandbox, deer-flow's provisioner, islo...): Node's fetch plus the
 * transport rules issue 15 asks of every one of them, in one place.
 *
 *   const http = new RemoteHttpClient({ service: "islo", baseUrl, headers: { Authorization: `Bearer ${key}` }, timeoutMs: 30_000 });
 *   const res = await http.request({ method: "POST", path: "/sandboxes", json: body, accept: [409] });
 *   res.status; res.json<T>();
 *
 * - Each attempt has its own timeout (`timeoutMs`, per request overridable).
 * - 5xx, network errors and attempt timeouts are retried with exponential
 *   backoff and jitter, `retries` times at most (only for `idempotent`
 *   requests, the default; pass `idempotent: false` for a call that must
 *   not run twice), then PROVIDER_UNAVAILABLE (retryable).
 * - 429 waits as long as Retry-After says (seconds or an HTTP date; capped by
 *   `maxRetryAfterMs`), within the same retry budget; then
 *   PROVIDER_RATE_LIMITED (retryable, carrying retryAfterMs for the worker).
 * - 401/403: PROVIDER_CREDENTIALS at once, never retried.
 * - Other statuses >= 400 not listed in `accept`: PROVIDER_FAILED, not
 *   retryable, with the service's own message (first 300 characters).
 * - The caller's `signal` stops waiting at once (no retry after it).
 * Header values (API keys) never appear in an error message.
 */
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { ConfigError, ErrorCodes, ProviderError, type ErrorCode } from "../../errors/index.js";

export interface RemoteHttpOptions {
  /** Service name, for messages ("microsandbox"). */
  service: string;
  /** e.g. http://127.0.0.1:5555 (a trailing slash is ignored). */
  baseUrl: string;
  /** Sent with every request (authentication). Never logged. */
  headers?: Record<string, string>;
  /** Per attempt, ms. */
  timeoutMs: number;
  /** Further attempts after a retryable failure. Default 4. */
  retries?: number;
  /** First backoff, ms; doubles per attempt, with jitter. Default 200. */
  backoffMs?: number;
  /** Longest backoff, ms. Default 5000. */
  maxBackoffMs?: number;
  /** Longest Retry-After honoured before giving up with PROVIDER_RATE_LIMITED, ms. Default 30000. */
  maxRetryAfterMs?: number;
}

export interface RemoteRequest {
  method: "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "PATCH";
  /** Path below baseUrl, starting with "/". */
  path: string;
  query?: Record<string, string | number | boolean | undefined>;
  /** JSON body (sets Content-Type). */
  json?: unknown;
  /** Any other body (a Buffer, FormData...). */
  body?: Buffer | FormData | string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Overrides the client's per-attempt timeout (long-running calls such as a synchronous exec). */
  timeoutMs?: number;
  /** Statuses >= 400 handed back to the caller instead of thrown (404 gone, 409 exists). */
  accept?: number[];
  /** Whether running the request twice is harmless (retries allowed). Default true. */
  idempotent?: boolean;
  /** What the request does, for messages ("create sandbox sq-abc"). Default "METHOD path". */
  op?: string;
}

export interface RemoteResponse {
  status: number;
  headers: Headers;
  body: Buffer;
  json<T>(): T;
  text(): string;
}

/** A ProviderError that remembers the HTTP status that caused it (when there was one). */
export class RemoteHttpError extends ProviderError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly status: number | null,
    opts: { retryable: boolean; cause?: unknown; retryAfterMs?: number },
  ) {
    super(code, message, opts);
  }
}

type Attempt = { kind: "response"; res: Response } | { kind: "error"; err: unknown; timedOut: boolean };

export class RemoteHttpClient {
  readonly baseUrl: string;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly maxRetryAfterMs: number;

  constructor(private readonly opts: RemoteHttpOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, "");
    this.retries = opts.retries ?? 4;
    this.backoffMs = opts.backoffMs ?? 200;
    this.maxBackoffMs = opts.maxBackoffMs ?? 5000;
    this.maxRetryAfterMs = opts.maxRetryAfterMs ?? 30_000;
  }

  /** Sends `req` (with retries) and reads the whole body. */
  async request(req: RemoteRequest): Promise<RemoteResponse> {
    const res = await this.send(req);
    const body = Buffer.from(await this.readBody(res, req));
    return {
      status: res.status,
      headers: res.headers,
      body,
      text: () => body.toString("utf8"),
      json: <T>() => JSON.parse(body.toString("utf8")) as T,
    };
  }

  /** Sends `req` (with retries) and hands back the body as a stream once the status is known. */
  async stream(req: RemoteRequest): Promise<{ status: number; headers: Headers; body: Readable }> {
    const res = await this.send(req);
    const body = res.body ? Readable.fromWeb(res.body as import("node:stream/web").ReadableStream) : Readable.from([]);
    return { status: res.status, headers: res.headers, body };
  }

  private url(req: RemoteRequest): string {
    const u = new URL(this.baseUrl + req.path);
    for (const [k, v] of Object.entries(req.query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    return u.toString();
  }

  private async readBody(res: Response, req: RemoteRequest): Promise<ArrayBuffer> {
    try {
      return await res.arrayBuffer();
    } catch (err) {
      throw this.fail(ErrorCodes.PROVIDER_UNAVAILABLE, `${this.what(req)}: reading the response failed: ${(err as Error).message}`, null, true, err);
    }
  }

  private what(req: RemoteRequest): string {
    return `${this.opts.service}: ${req.op ?? `${req.method} ${req.path}`}`;
  }

  private fail(code: ErrorCode, message: string, status: number | null, retryable: boolean, cause?: unknown, retryAfterMs?: number): RemoteHttpError {
    return new RemoteHttpError(code, message, status, { retryable, cause, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) });
  }

  private async attempt(req: RemoteRequest): Promise<Attempt> {
    const timeout = AbortSignal.timeout(req.timeoutMs ?? this.opts.timeoutMs);
    const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
    const headers: Record<string, string> = { ...this.opts.headers, ...req.headers };
    let body: Buffer | FormData | string | undefined = req.body;
    if (req.json !== undefined) {
      body = JSON.stringify(req.json);
      headers["Content-Type"] = "application/json";
    }
    try {
      const res = await fetch(this.url(req), { method: req.method, headers, body, signal });
      return { kind: "response", res };
    } catch (err) {
      return { kind: "error", err, timedOut: timeout.aborted && !req.signal?.aborted };
    }
  }

  private async send(req: RemoteRequest): Promise<Response> {
    const idempotent = req.idempotent ?? true;
    for (let n = 0; ; n++) {
      if (req.signal?.aborted) throw this.aborted(req);
      const a = await this.attempt(req);
      if (req.signal?.aborted) {
        if (a.kind === "response") await a.res.body?.cancel().catch(() => undefined);
        throw this.aborted(req);
      }
      const last = n >= this.retries;
      if (a.kind === "error") {
        const why = a.timedOut ? `no answer within ${req.timeoutMs ?? this.opts.timeoutMs} ms` : describe(a.err);
        if (last || !idempotent) {
          throw this.fail(ErrorCodes.PROVIDER_UNAVAILABLE, `${this.what(req)}: ${why}${n ? ` (after ${n + 1} attempts)` : ""}`, null, true, a.err);
        }
        await this.backoff(n, req.signal);
        continue;
      }
      const { res } = a;
      if (res.status < 400 || req.accept?.includes(res.status)) return res;
      const detail = await res.text().then(
        (t) => t.trim().slice(0, 300),
        () => "",
      );
      const status = `HTTP ${res.status}${detail ? `: ${detail}` : ""}`;
      if (res.status === 401 || res.status === 403) {
        throw this.fail(ErrorCodes.PROVIDER_CREDENTIALS, `${this.what(req)}: credentials refused (${status})`, res.status, false);
      }
      if (res.status === 429) {
        const wait = retryAfterMs(res.headers.get("retry-after")) ?? this.backoffDelay(n);
        if (last || wait > this.maxRetryAfterMs) {
          throw this.fail(ErrorCodes.PROVIDER_RATE_LIMITED, `${this.what(req)}: rate limited (${status})`, 429, true, undefined, wait);
        }
        await this.pause(wait, req.signal);
        continue;
      }
      if (res.status >= 500) {
        if (last || !idempotent) {
          throw this.fail(ErrorCodes.PROVIDER_UNAVAILABLE, `${this.what(req)}: ${status}${n ? ` (after ${n + 1} attempts)` : ""}`, res.status, true);
        }
        await this.backoff(n, req.signal);
        continue;
      }
      throw this.fail(ErrorCodes.PROVIDER_FAILED, `${this.what(req)}: ${status}`, res.status, false);
    }
  }

  private aborted(req: RemoteRequest): RemoteHttpError {
    return this.fail(ErrorCodes.PROVIDER_FAILED, `${this.what(req)}: aborted`, null, true, req.signal?.reason);
  }

  private backoffDelay(n: number): number {
    const base = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** n);
    // Full jitter on the upper half: spread, never near zero.
    return Math.round(base / 2 + Math.random() * (base / 2));
  }

  private backoff(n: number, signal?: AbortSignal): Promise<void> {
    return this.pause(this.backoffDelay(n), signal);
  }

  private async pause(ms: number, signal?: AbortSignal): Promise<void> {
    await sleep(ms, undefined, signal ? { signal } : {}).catch(() => undefined);
  }
}

/** Retry-After as ms: delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function retryAfterMs(header: string | null): number | undefined {
  if (header === null || header.trim() === "") return undefined;
  const s = header.trim();
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  const at = Date.parse(s);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

function describe(err: unknown): string {
  const e = err as { message?: string; cause?: { code?: string; message?: string } };
  return e.cause?.code ?? e.cause?.message ?? e.message ?? String(err);
}

/** An API key from a variable or, when that is empty, from a secret file (its first line). */
export async function readApiKey(value: string | undefined, file: string | undefined): Promise<string | undefined> {
  if (value) return value;
  if (!file) return undefined;
  const { readFile } = await import("node:fs/promises");
  const key = (await readFile(file, "utf8")).split("\n")[0]?.trim();
  if (!key) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `API key file ${file} is empty`);
  return key;
}
