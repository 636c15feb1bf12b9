/**
 * islo's REST API as the provider uses it, over the shared remote HTTP
 * client (retries, 429, credentials: providers/remote/http-client.ts). Two
 * bases, as in islo's SDK: control (`/auth/token`, `/gateway/profiles`) and
 * compute (`/sandboxes`...). The API key is exchanged for a session token
 * (`POST /auth/token`), kept until shortly before `cookie_max_age` runs out
 * and exchanged again once when a call answers 401. The key and tokens
 * never appear in messages.
 */
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { RemoteHttpClient, RemoteHttpError, type RemoteRequest, type RemoteResponse } from "../remote/http-client.js";

export interface IsloApiOptions {
  controlUrl: string;
  computeUrl: string;
  apiKey: string;
  /** Per attempt, ms. */
  timeoutMs: number;
  /** Further attempts after a 5xx or a timeout (islo's own client tolerates 5 consecutive 5xx while polling). */
  retries: number;
  /** First backoff, ms. */
  backoffMs?: number;
}

/** `SandboxResponse`, the fields the provider reads. */
export interface IsloSandbox {
  id: string;
  name: string;
  status: string;
  image?: string;
  workdir?: string | null;
  created_at?: string;
}

export interface IsloExecResult {
  exec_id: string;
  status: string;
  exit_code?: number | null;
  stdout: string;
  stderr: string;
  truncated: boolean;
}

export interface IsloProfile {
  id: string;
  name: string;
  description?: string | null;
}

/** islo's ErrorResponse `code` of a failed call, when the body had one. */
export function errorCode(res: RemoteResponse): string | undefined {
  try {
    return res.json<{ code?: string }>().code;
  } catch {
    return undefined;
  }
}

/** Token refresh margin, s: the SDK's (refresh_margin_sec). */
const REFRESH_MARGIN_S = 60;

export class IsloApi {
  readonly control: RemoteHttpClient;
  readonly compute: RemoteHttpClient;
  private token: { value: string; until: number } | null = null;
  private exchanging: Promise<string> | null = null;

  constructor(private readonly opts: IsloApiOptions) {
    const common = { service: "islo", timeoutMs: opts.timeoutMs, retries: opts.retries, ...(opts.backoffMs ? { backoffMs: opts.backoffMs } : {}) };
    this.control = new RemoteHttpClient({ ...common, baseUrl: opts.controlUrl });
    this.compute = new RemoteHttpClient({ ...common, baseUrl: opts.computeUrl });
  }

  private async session(signal?: AbortSignal): Promise<string> {
    if (this.token && Date.now() < this.token.until) return this.token.value;
    this.exchanging ??= (async () => {
      try {
        const res = await this.control.request({
          method: "POST",
          path: "/auth/token",
          json: { access_key: this.opts.apiKey },
          op: "exchange the API key for a session token",
          ...(signal ? { signal } : {}),
        });
        const body = res.json<{ session_token?: string; cookie_max_age?: number }>();
        if (typeof body.session_token !== "string") {
          throw new ProviderError(ErrorCodes.PROVIDER_FAILED, "islo: /auth/token answered without a session_token", { retryable: true });
        }
        const ttl = typeof body.cookie_max_age === "number" ? body.cookie_max_age : 600;
        this.token = { value: body.session_token, until: Date.now() + Math.max(ttl - REFRESH_MARGIN_S, 1) * 1000 };
        return body.session_token;
      } finally {
        this.exchanging = null;
      }
    })();
    return this.exchanging;
  }

  /** One authenticated call; a 401 gets one fresh token and one more try. */
  async call(plane: "control" | "compute", req: RemoteRequest): Promise<RemoteResponse> {
    const client = plane === "control" ? this.control : this.compute;
    for (let fresh = false; ; fresh = true) {
      const token = await this.session(req.signal);
      try {
        return await client.request({ ...req, headers: { ...req.headers, Authorization: `Bearer ${token}` } });
      } catch (err) {
        if (!fresh && err instanceof RemoteHttpError && err.status === 401) {
          if (this.token?.value === token) this.token = null;
          continue;
        }
        throw err;
      }
    }
  }

  /** A streamed GET (archives), authenticated like `call`. */
  async stream(req: RemoteRequest): Promise<Awaited<ReturnType<RemoteHttpClient["stream"]>>> {
    for (let fresh = false; ; fresh = true) {
      const token = await this.session(req.signal);
      try {
        return await this.compute.stream({ ...req, headers: { ...req.headers, Authorization: `Bearer ${token}` } });
      } catch (err) {
        if (!fresh && err instanceof RemoteHttpError && err.status === 401) {
          if (this.token?.value === token) this.token = null;
          continue;
        }
        throw err;
      }
    }
  }

  getSandbox(name: string, signal?: AbortSignal): Promise<RemoteResponse> {
    return this.call("compute", { method: "GET", path: `/sandboxes/${encodeURIComponent(name)}`, accept: [404], op: `get sandbox ${name}`, ...sig(signal) });
  }

  deleteSandbox(name: string, signal?: AbortSignal): Promise<RemoteResponse> {
    return this.call("compute", { method: "DELETE", path: `/sandboxes/${encodeURIComponent(name)}`, accept: [404], op: `delete sandbox ${name}`, ...sig(signal) });
  }

  transition(name: string, op: "pause" | "resume" | "stop", signal?: AbortSignal): Promise<RemoteResponse> {
    return this.call("compute", { method: "POST", path: `/sandboxes/${encodeURIComponent(name)}/${op}`, accept: [404, 409], op: `${op} sandbox ${name}`, ...sig(signal) });
  }

  /** Every sandbox whose name starts with `prefix`, following the cursor. */
  async listSandboxes(prefix: string, signal?: AbortSignal): Promise<IsloSandbox[]> {
    const out: IsloSandbox[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < 10_000; page++) {
      const res = await this.call("compute", {
        method: "GET",
        path: "/sandboxes",
        query: { name_prefix: prefix, limit: 100, cursor },
        op: "list sandboxes",
        ...sig(signal),
      });
      const body = res.json<{ items: IsloSandbox[]; next_cursor?: string | null }>();
      out.push(...body.items);
      if (!body.next_cursor) break;
      cursor = body.next_cursor;
    }
    return out;
  }

  async listProfiles(signal?: AbortSignal): Promise<IsloProfile[]> {
    const res = await this.call("control", { method: "GET", path: "/gateway/profiles", op: "list gateway profiles", ...sig(signal) });
    return res.json<IsloProfile[]>();
  }

  deleteProfile(id: string, signal?: AbortSignal): Promise<RemoteResponse> {
    return this.call("control", { method: "DELETE", path: `/gateway/profiles/${encodeURIComponent(id)}`, accept: [404], op: `delete gateway profile ${id}`, ...sig(signal) });
  }
}

function sig(signal: AbortSignal | undefined): { signal?: AbortSignal } {
  return signal ? { signal } : {};
}
