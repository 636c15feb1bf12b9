/**
 * A minimal Docker Engine API client over node:http: JSON calls, raw body
 * streams and the hijacked exec stream. Works with Docker and with Podman's
 * Docker-compatible service. Errors leave here as EngineHttpError (an HTTP
 * status from the engine) or as the raw socket error; engine-errors.ts turns
 * both into ProviderErrors.
 */
import http from "node:http";
import type { Duplex, Readable } from "node:stream";

export type EngineEndpoint =
  | { kind: "unix"; socketPath: string }
  | { kind: "tcp"; host: string; port: number };

/** Parses DOCKER_HOST (`unix:///path`, `tcp://host:port`); default is Docker's socket. */
export function parseDockerHost(value: string | undefined): EngineEndpoint {
  const raw = value && value.trim() !== "" ? value.trim() : "unix:///var/run/docker.sock";
  if (raw.startsWith("unix://")) return { kind: "unix", socketPath: raw.slice("unix://".length) };
  if (raw.startsWith("tcp://") || raw.startsWith("http://")) {
    const url = new URL(raw.replace(/^tcp:/, "http:"));
    return { kind: "tcp", host: url.hostname, port: url.port ? Number(url.port) : 2375 };
  }
  if (raw.startsWith("/")) return { kind: "unix", socketPath: raw };
  throw new Error(`DOCKER_HOST must be unix:///path or tcp://host:port, got "${raw}"`);
}

/** Non-2xx answer from the engine. */
export class EngineHttpError extends Error {
  constructor(
    readonly status: number,
    readonly method: string,
    readonly path: string,
    readonly engineMessage: string,
  ) {
    super(`${method} ${path}: HTTP ${status}: ${engineMessage}`);
    this.name = "EngineHttpError";
  }
}

export interface EngineRequest {
  method: string;
  path: string;
  query?: Record<string, string | number | boolean | undefined>;
  /** Objects are sent as JSON; streams and buffers as-is (tar bodies). */
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export interface EngineClientOptions {
  dockerHost?: string;
  /** Versioned path prefix; 1.41 is understood by Docker 20.10+ and Podman 3+. */
  apiVersion?: string;
}

export class EngineClient {
  readonly endpoint: EngineEndpoint;
  readonly apiVersion: string;
  // Keep-alive: short JSON calls (create/start/exec create/inspect) reuse sockets.
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

  constructor(opts: EngineClientOptions = {}) {
    this.endpoint = parseDockerHost(opts.dockerHost);
    this.apiVersion = opts.apiVersion ?? "1.41";
  }

  describe(): string {
    return this.endpoint.kind === "unix"
      ? `unix://${this.endpoint.socketPath}`
      : `tcp://${this.endpoint.host}:${this.endpoint.port}`;
  }

  /** Sends a request; resolves with the response whatever its status. */
  raw(req: EngineRequest, agent: http.Agent | false = this.agent): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const r = http.request(this.options(req, agent), resolve);
      r.on("error", reject);
      this.sendBody(r, req.body, reject);
    });
  }

  /** Sends a request and fails on a non-2xx status (the body is consumed then). */
  async stream(req: EngineRequest, agent?: http.Agent | false): Promise<http.IncomingMessage> {
    const res = await this.raw(req, agent);
    if ((res.statusCode ?? 500) >= 300) throw await this.httpError(req, res);
    return res;
  }

  /** JSON call; `undefined` for empty bodies (204). */
  async json<T>(req: EngineRequest): Promise<T> {
    const res = await this.stream(req);
    const text = await readAll(res);
    return (text.length ? JSON.parse(text.toString("utf8")) : undefined) as T;
  }

  /**
   * POST with `Upgrade: tcp`: the engine answers 101 and the socket becomes a
   * raw duplex (exec stdin in, multiplexed output out). Some engines answer
   * 200 and stream without upgrading; then the response body is the output
   * and stdin cannot be sent (`socket` is null).
   */
  hijack(req: EngineRequest): Promise<{ socket: Duplex | null; output: Readable; head: Buffer }> {
    return new Promise((resolve, reject) => {
      const opts = this.options(
        { ...req, headers: { ...req.headers, Connection: "Upgrade", Upgrade: "tcp" } },
        false,
      );
      const r = http.request(opts);
      r.on("upgrade", (_res, socket, head) => resolve({ socket, output: socket, head }));
      r.on("response", (res) => {
        if ((res.statusCode ?? 500) >= 300) {
          this.httpError(req, res).then(reject, reject);
          return;
        }
        resolve({ socket: null, output: res, head: Buffer.alloc(0) });
      });
      r.on("error", reject);
      this.sendBody(r, req.body, reject);
    });
  }

  close(): void {
    this.agent.destroy();
  }

  private options(req: EngineRequest, agent: http.Agent | false): http.RequestOptions {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(req.query ?? {})) if (v !== undefined) qs.set(k, String(v));
    const q = qs.toString();
    const path = `/v${this.apiVersion}${req.path}${q ? `?${q}` : ""}`;
    const headers: Record<string, string> = { Host: "docker", ...req.headers };
    const isJson = req.body !== undefined && !isStreamLike(req.body) && !Buffer.isBuffer(req.body);
    if (isJson) headers["Content-Type"] = "application/json";
    const base: http.RequestOptions = { method: req.method, path, headers, agent, signal: req.signal };
    return this.endpoint.kind === "unix"
      ? { ...base, socketPath: this.endpoint.socketPath }
      : { ...base, host: this.endpoint.host, port: this.endpoint.port };
  }

  private sendBody(r: http.ClientRequest, body: unknown, reject: (e: unknown) => void): void {
    if (body === undefined) {
      r.end();
    } else if (Buffer.isBuffer(body)) {
      r.end(body);
    } else if (isStreamLike(body)) {
      body.on("error", (e) => {
        r.destroy(e);
        reject(e);
      });
      body.pipe(r);
    } else {
      r.end(JSON.stringify(body));
    }
  }

  private async httpError(req: EngineRequest, res: http.IncomingMessage): Promise<EngineHttpError> {
    const text = (await readAll(res).catch(() => Buffer.alloc(0))).toString("utf8");
    let message = text.trim();
    try {
      const parsed = JSON.parse(text) as { message?: string };
      if (parsed.message) message = parsed.message;
    } catch {
      // plain-text error body
    }
    return new EngineHttpError(res.statusCode ?? 0, req.method, req.path, message);
  }
}

function isStreamLike(v: unknown): v is Readable {
  return typeof v === "object" && v !== null && typeof (v as Readable).pipe === "function";
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c as string));
  return Buffer.concat(chunks);
}
