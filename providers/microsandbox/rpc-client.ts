/**
 * JSON-RPC 2.0 over microsandbox's `POST /api/v1/rpc` (Bearer key), on the
 * shared remote HTTP client (retries, 429, credentials). A JSON-RPC error
 * object becomes MsbRpcError (PROVIDER_FAILED, not retryable) carrying the
 * server's code and message.
 */
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { RemoteHttpClient, type RemoteHttpOptions } from "../remote/http-client.js";

export class MsbRpcError extends ProviderError {
  constructor(
    readonly rpcCode: number,
    message: string,
    readonly method: string,
  ) {
    super(ErrorCodes.PROVIDER_FAILED, `microsandbox: ${method}: ${message} (JSON-RPC error ${rpcCode})`, { retryable: false });
  }
  /** The server's own message. */
  get serverMessage(): string {
    return this.message;
  }
}

interface RpcReply<T> {
  jsonrpc?: string;
  result?: T;
  error?: { code: number; message: string };
}

export class MsbRpcClient {
  readonly http: RemoteHttpClient;
  private nextId = 1;

  constructor(opts: Omit<RemoteHttpOptions, "service" | "headers"> & { apiKey?: string }) {
    this.http = new RemoteHttpClient({
      ...opts,
      service: "microsandbox",
      headers: opts.apiKey ? { Authorization: `Bearer ${opts.apiKey}` } : {},
    });
  }

  async call<T>(method: string, params: Record<string, unknown>, opts: { signal?: AbortSignal; timeoutMs?: number; idempotent?: boolean } = {}): Promise<T> {
    const res = await this.http.request({
      method: "POST",
      path: "/api/v1/rpc",
      json: { jsonrpc: "2.0", method, params, id: this.nextId++ },
      // JSON-RPC errors may come with a 4xx status; their body says what went wrong.
      accept: [400, 404, 422],
      op: `${method}${typeof params.sandbox === "string" ? ` ${params.sandbox}` : ""}`,
      ...opts,
    });
    let reply: RpcReply<T>;
    try {
      reply = res.json<RpcReply<T>>();
    } catch {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `microsandbox: ${method}: HTTP ${res.status} with a body that is not JSON-RPC`, { retryable: true });
    }
    if (reply.error) throw new MsbRpcError(reply.error.code, reply.error.message, method);
    if (res.status >= 400) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `microsandbox: ${method}: HTTP ${res.status}`, { retryable: false });
    return reply.result as T;
  }

  async health(signal?: AbortSignal): Promise<void> {
    await this.http.request({ method: "GET", path: "/api/v1/health", op: "health", ...(signal ? { signal } : {}) });
  }
}
