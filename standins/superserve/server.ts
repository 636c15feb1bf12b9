/**
 * SuperserveStandin: Superserve's sandbox API on 127.0.0.1, as
 * @superserve/sdk 0.8.1 speaks it (the SDK's code is the reference for the
 * wire format; see standins/README.md). Two listeners, as the service has
 * two hosts:
 *
 * - control plane (the SDK's baseUrl): `X-API-Key`; `/sandboxes` create,
 *   list (`?metadata.KEY=VALUE`), get, patch, delete, `/pause`, `/resume`,
 *   `/activate` (both rotate the sandbox's access token);
 * - data plane (the shared sandbox host: `X-Superserve-Sandbox-Id` names the
 *   sandbox, `X-Access-Token` authorises): `POST /exec` (JSON),
 *   `POST /exec/stream` (SSE), `POST|GET /files?path=` (raw bytes).
 *
 * Errors are `{"error":{"code","message"}}`, which the SDK maps by status.
 * A stale access token is 401 and a paused sandbox's data plane 503, the two
 * statuses on which the SDK activates and retries once. Each sandbox is a
 * real local sandbox, so exec, files, limits and kills are real; a command
 * whose stream client goes away is killed (its whole tree).
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { randomBytes, randomUUID } from "node:crypto";
import path from "node:path";
import { StringDecoder } from "node:string_decoder";
import type { Sandbox, SandboxProvider } from "../../providers/provider.js";
import { isSandqueueError, ErrorCodes } from "../../errors/index.js";
import { FaultTable, parseFault, type SuperserveOp } from "./faults.js";
import { serveFaultRoutes } from "../fault-admin.js";
import { closeServers, jsonObject, listenPlanes, loopbackUrl, readBody, sendJson, sameSecret } from "../http-server.js";

export interface SuperserveStandinOptions {
  /** Runs the sandboxes. The stand-in never closes it: its owner does, after stop(). */
  provider: SandboxProvider;
  host?: string;
  /** 0 (default): any free port. */
  controlPort?: number;
  dataPort?: number;
  /** The API key accepted; default a random `ss_live_…`-shaped one. */
  apiKey?: string;
  /** Template name -> local image. Default superserve/base and superserve/python-3.11 on "host". */
  templates?: Record<string, string>;
  /** Memory of every sandbox (the template's), MiB. Default 1024. */
  memoryMb?: number;
  /** pids limit of every sandbox (Superserve has no such setting). Default 256. */
  pidsLimit?: number;
  /** How long `pausing` and `resuming` last, ms. Default 30. */
  transitionMs?: number;
  /** Output kept per stream and exec; past it the command is killed. Default 64 MiB. */
  maxOutputBytes?: number;
  /** Largest request body (file uploads), bytes. Default 256 MiB. */
  maxBodyBytes?: number;
}

export type SandboxStatus = "starting" | "active" | "pausing" | "paused" | "resuming" | "failed" | "deleted";

interface SandboxRecord {
  id: string;
  name: string;
  status: SandboxStatus;
  template: string;
  metadata: Record<string, string>;
  envVars: Record<string, string>;
  network: { allow_out?: string[]; deny_out?: string[] } | undefined;
  timeoutSeconds: number | undefined;
  createdAt: string;
  token: string;
  box: Sandbox | null;
  /** Ends the sandbox's running execs (pause, delete, failure). */
  running: Set<AbortController>;
}

/** One line of the request log: what a test can assert on (never a key or token). */
export interface SuperserveRequestLogEntry {
  plane: "control" | "data";
  method: string;
  path: string;
  op: SuperserveOp | "admin" | "unknown";
  sandbox?: string;
  status: number;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

const MIB = 1024 * 1024;
const DEFAULT_ENV = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME: "/workspace" };
const CODE_NAMES: Record<number, string> = {
  400: "bad_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  409: "conflict",
  429: "rate_limited",
  500: "internal_error",
  502: "bad_gateway",
  503: "unavailable",
  504: "gateway_timeout",
};

function sendError(res: ServerResponse, err: HttpError): void {
  const headers: Record<string, string> = err.retryAfterSeconds === undefined ? {} : { "Retry-After": String(err.retryAfterSeconds) };
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, err.status, { error: { code: err.code, message: err.message } }, headers);
}

/** An absolute path without `..` segments, as the data plane requires. */
function checkFilePath(p: string | null): string {
  if (!p) throw new HttpError(400, "invalid_path", "query parameter path is required");
  if (!p.startsWith("/")) throw new HttpError(400, "invalid_path", `path must be absolute: ${p}`);
  if (p.split("/").some((s) => s === "..")) throw new HttpError(400, "invalid_path", `path must not contain '..': ${p}`);
  if (p.includes("\0")) throw new HttpError(400, "invalid_path", "path contains a NUL byte");
  return path.posix.normalize(p);
}

/** The operation a control-plane request asks for (by method and path). */
function routeOp(method: string, parts: string[]): SuperserveOp | "unknown" {
  if (parts.length === 1) return method === "POST" ? "create" : method === "GET" ? "list" : "unknown";
  if (parts.length === 2) return method === "GET" ? "get" : method === "PATCH" ? "update" : method === "DELETE" ? "delete" : "unknown";
  const action = parts[2];
  return method === "POST" && (action === "pause" || action === "resume" || action === "activate") ? action : "unknown";
}

export class SuperserveStandin {
  readonly faults = new FaultTable();
  /** Every request served, in order. */
  readonly requests: SuperserveRequestLogEntry[] = [];
  readonly apiKey: string;
  private readonly sandboxes = new Map<string, SandboxRecord>();
  private readonly templates: Record<string, string>;
  private stopped = false;

  private constructor(
    private readonly opts: SuperserveStandinOptions,
    private readonly control: http.Server,
    private readonly data: http.Server,
  ) {
    this.apiKey = opts.apiKey ?? `ss_live_use_${randomBytes(24).toString("base64url").slice(0, 32)}`;
    this.templates = opts.templates ?? { "superserve/base": "host", "superserve/python-3.11": "host" };
  }

  static async start(opts: SuperserveStandinOptions): Promise<SuperserveStandin> {
    const standin = new SuperserveStandin(opts, http.createServer(), http.createServer());
    await listenPlanes(
      opts.host ?? "127.0.0.1",
      [
        { plane: "control", server: standin.control, port: opts.controlPort },
        { plane: "data", server: standin.data, port: opts.dataPort },
      ],
      (plane, req, res) => void standin.serve(plane, req, res),
    );
    return standin;
  }

  /** The SDK's baseUrl. */
  get controlUrl(): string {
    return loopbackUrl(this.control);
  }

  /** Where the SDK's data-plane host is served. */
  get dataUrl(): string {
    return loopbackUrl(this.data);
  }

  /** What a worker needs to reach the stand-in, as KEY=value lines. */
  envFile(): string {
    return [
      "SANDQUEUE_PROVIDER=superserve",
      `SANDQUEUE_SUPERSERVE_BASE_URL=${this.controlUrl}`,
      `SANDQUEUE_SUPERSERVE_DATA_PLANE_URL=${this.dataUrl}`,
      `SANDQUEUE_SUPERSERVE_API_KEY=${this.apiKey}`,
      "",
    ].join("\n");
  }

  /** The sandboxes the list call shows (not deleted), with their status and metadata. */
  sandboxList(): { id: string; name: string; status: SandboxStatus; metadata: Record<string, string>; network: SandboxRecord["network"] }[] {
    return [...this.sandboxes.values()]
      .filter((s) => s.status !== "deleted")
      .map((s) => ({ id: s.id, name: s.name, status: s.status, metadata: { ...s.metadata }, network: s.network }));
  }

  /**
   * Sets a sandbox's status from outside, as the service would on its own:
   * `paused` (its execs end), `resuming` (then `active` after the transition
   * time), `failed` or `deleted` (its local sandbox goes).
   */
  async setStatus(id: string, status: "paused" | "resuming" | "failed" | "deleted" | (string & {})): Promise<void> {
    const s = this.sandboxes.get(id);
    if (!s) throw new Error(`no sandbox ${id}`);
    if (status === "resuming") {
      s.status = "resuming";
      setTimeout(() => {
        if (s.status === "resuming") s.status = "active";
      }, this.transitionMs).unref();
      return;
    }
    this.endExecs(s);
    // Any other string: a status this stand-in (and the SDK's types) do not know, for clients' "unknown" branches.
    s.status = status as SandboxStatus;
    if (status !== "paused") await this.dropBox(s);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await closeServers(this.control, this.data);
    await Promise.allSettled([...this.sandboxes.values()].map((s) => this.dropBox(s)));
    this.sandboxes.clear();
  }

  private get transitionMs(): number {
    return this.opts.transitionMs ?? 30;
  }

  private endExecs(s: SandboxRecord): void {
    for (const c of s.running) c.abort();
    s.running.clear();
  }

  private async dropBox(s: SandboxRecord): Promise<void> {
    this.endExecs(s);
    const box = s.box;
    s.box = null;
    await box?.release();
  }

  private async serve(plane: "control" | "data", req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin");
    const entry: SuperserveRequestLogEntry = { plane, method: req.method ?? "GET", path: url.pathname, op: "unknown", status: 0 };
    res.once("finish", () => (entry.status = res.statusCode));
    res.once("close", () => (entry.status ||= res.statusCode));
    this.requests.push(entry);
    try {
      if (this.stopped) throw new HttpError(503, "unavailable", "shutting down");
      if (plane === "control" && url.pathname.startsWith("/standin/")) {
        entry.op = "admin";
        this.requireApiKey(req);
        await this.admin(req, res, url);
        return;
      }
      if (plane === "control") await this.serveControl(req, res, url, entry);
      else await this.serveData(req, res, url, entry);
    } catch (err) {
      if (err instanceof HttpError) sendError(res, err);
      else sendError(res, new HttpError(500, "internal_error", err instanceof Error ? err.message : String(err)));
    }
  }

  private requireApiKey(req: IncomingMessage): void {
    const key = req.headers["x-api-key"];
    if (!sameSecret(typeof key === "string" ? key : undefined, this.apiKey)) throw new HttpError(401, "unauthorized", "Missing or invalid API key");
  }

  /** Applies a matching fail or delay fault (after authentication, as the service's own limits come after it). */
  private async applyFaults(op: SuperserveOp, sandbox: readonly string[]): Promise<void> {
    const delay = this.faults.take(op, sandbox, ["delay"]);
    if (delay?.type === "delay") await new Promise((r) => setTimeout(r, delay.ms));
    const fail = this.faults.take(op, sandbox, ["fail"]);
    if (fail?.type === "fail") {
      throw new HttpError(fail.code, CODE_NAMES[fail.code] ?? "error", `injected fault: ${fail.code}`, fail.retryAfterSeconds);
    }
  }

  private async readBody(req: IncomingMessage): Promise<Buffer> {
    const max = this.opts.maxBodyBytes ?? 256 * MIB;
    const body = await readBody(req, max);
    if (!body) throw new HttpError(413, "payload_too_large", `request body above ${max} bytes`);
    return body;
  }

  private async readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
    const v = jsonObject(await this.readBody(req));
    if (!v) throw new HttpError(400, "invalid_json", "request body must be a JSON object");
    return v;
  }

  private view(s: SandboxRecord, withToken = false): Record<string, unknown> {
    return {
      id: s.id,
      name: s.name,
      status: s.status,
      vcpu_count: 1,
      memory_mib: this.opts.memoryMb ?? 1024,
      created_at: s.createdAt,
      ...(s.timeoutSeconds === undefined ? {} : { timeout_seconds: s.timeoutSeconds }),
      ...(s.network ? { network: s.network } : {}),
      metadata: s.metadata,
      ...(withToken ? { access_token: s.token } : {}),
    };
  }

  private find(id: string): SandboxRecord {
    const s = this.sandboxes.get(id);
    if (!s) throw new HttpError(404, "sandbox_not_found", `sandbox ${id} not found`);
    return s;
  }

  private async serveControl(req: IncomingMessage, res: ServerResponse, url: URL, entry: SuperserveRequestLogEntry): Promise<void> {
    const method = req.method ?? "GET";
    const parts = url.pathname.split("/").filter(Boolean);
    if (parts[0] !== "sandboxes" || parts.length > 3) throw new HttpError(404, "not_found", `no route ${method} ${url.pathname}`);
    // Named before the key is checked, so a refused request is logged as what it was.
    entry.op = routeOp(method, parts);
    this.requireApiKey(req);
    const id = parts[1] ? decodeURIComponent(parts[1]) : undefined;
    if (id) entry.sandbox = id;
    const names = (s?: SandboxRecord): string[] => (s ? [s.id, s.name] : id ? [id] : []);

    if (parts.length === 1 && method === "POST") {
      entry.op = "create";
      const body = await this.readJson(req);
      const match = typeof body.name === "string" ? [body.name] : [];
      await this.applyFaults("create", match);
      const created = await this.create(body);
      const lose = this.faults.take("create", match, ["lose"]);
      if (lose?.type === "lose") throw new HttpError(lose.code, CODE_NAMES[lose.code] ?? "error", `injected fault: created ${created.id}, answer lost`);
      sendJson(res, 201, this.view(created, true));
      return;
    }
    if (parts.length === 1 && method === "GET") {
      entry.op = "list";
      await this.applyFaults("list", []);
      const filters = [...url.searchParams.entries()].filter(([k]) => k.startsWith("metadata.")).map(([k, v]) => [k.slice("metadata.".length), v] as const);
      const list = [...this.sandboxes.values()].filter((s) => s.status !== "deleted" && filters.every(([k, v]) => s.metadata[k] === v));
      sendJson(res, 200, list.map((s) => this.view(s)));
      return;
    }
    if (!id) throw new HttpError(405, "method_not_allowed", `${method} ${url.pathname}`);
    if (parts.length === 2) {
      const op: SuperserveOp = method === "GET" ? "get" : method === "PATCH" ? "update" : method === "DELETE" ? "delete" : "get";
      if (!["GET", "PATCH", "DELETE"].includes(method)) throw new HttpError(405, "method_not_allowed", `${method} ${url.pathname}`);
      entry.op = op;
      const s = this.sandboxes.get(id);
      await this.applyFaults(op, names(s));
      if (!s) throw new HttpError(404, "sandbox_not_found", `sandbox ${id} not found`);
      if (method === "GET") {
        sendJson(res, 200, this.view(s));
      } else if (method === "PATCH") {
        const body = await this.readJson(req);
        if (s.status === "deleted") throw new HttpError(404, "sandbox_not_found", `sandbox ${id} not found`);
        if (body.metadata !== undefined) s.metadata = this.metadataOf(body.metadata);
        if (body.timeout_seconds !== undefined) s.timeoutSeconds = body.timeout_seconds === null ? undefined : Number(body.timeout_seconds);
        if (body.network !== undefined) s.network = body.network as SandboxRecord["network"];
        sendJson(res, 200, this.view(s));
      } else {
        this.sandboxes.delete(id);
        await this.dropBox(s);
        res.writeHead(204).end();
      }
      return;
    }
    const action = parts[2];
    if (method !== "POST" || (action !== "pause" && action !== "resume" && action !== "activate")) {
      throw new HttpError(404, "not_found", `no route ${method} ${url.pathname}`);
    }
    entry.op = action;
    const s = this.sandboxes.get(id);
    await this.applyFaults(action, names(s));
    if (!s || s.status === "deleted") throw new HttpError(404, "sandbox_not_found", `sandbox ${id} not found`);
    if (action === "pause") {
      if (s.status === "paused" || s.status === "pausing") {
        sendJson(res, 200, this.view(s));
        return;
      }
      if (s.status !== "active") throw new HttpError(409, "invalid_state", `sandbox ${id} is ${s.status}; only an active sandbox can be paused`);
      this.endExecs(s);
      s.status = "pausing";
      // The token of a paused sandbox is revoked: resume issues a new one.
      s.token = this.newToken();
      setTimeout(() => {
        if (s.status === "pausing") s.status = "paused";
      }, this.transitionMs).unref();
      sendJson(res, 200, this.view(s));
      return;
    }
    // resume / activate: a paused sandbox is resumed (synchronously, as the SDK expects a usable token back); both rotate the token.
    if (s.status === "failed") throw new HttpError(409, "invalid_state", `sandbox ${id} has failed`);
    if (s.status === "pausing") throw new HttpError(409, "invalid_state", `sandbox ${id} is pausing`);
    if (s.status === "paused" || s.status === "resuming") {
      s.status = "resuming";
      await new Promise((r) => setTimeout(r, this.transitionMs));
      if ((s.status as SandboxStatus) !== "resuming") throw new HttpError(409, "invalid_state", `sandbox ${id} is ${s.status}`);
      s.status = "active";
    }
    s.token = this.newToken();
    sendJson(res, 200, this.view(s, true));
  }

  private newToken(): string {
    return `at_${randomBytes(24).toString("base64url")}`;
  }

  /** An object of strings (metadata, env_vars, env), or 400 naming the field. */
  private metadataOf(v: unknown, field = "metadata"): Record<string, string> {
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new HttpError(400, `invalid_${field}`, `${field} must be an object of strings`);
    const out: Record<string, string> = {};
    for (const [k, val] of Object.entries(v)) {
      if (typeof val !== "string") throw new HttpError(400, `invalid_${field}`, `${field}.${k} must be a string`);
      out[k] = val;
    }
    return out;
  }

  private async create(body: Record<string, unknown>): Promise<SandboxRecord> {
    if (typeof body.name !== "string" || body.name.trim() === "") throw new HttpError(400, "invalid_name", "name is required");
    const template = body.from_template === undefined ? "superserve/base" : body.from_template;
    if (typeof template !== "string") throw new HttpError(400, "invalid_template", "from_template must be a string");
    const image = this.templates[template];
    if (image === undefined) throw new HttpError(404, "template_not_found", `template ${template} not found`);
    const metadata = body.metadata === undefined ? {} : this.metadataOf(body.metadata);
    const envVars = body.env_vars === undefined ? {} : this.metadataOf(body.env_vars, "env_vars");
    let box: Sandbox;
    try {
      box = await this.opts.provider.acquire(
        {
          image,
          limits: { memoryMb: this.opts.memoryMb ?? 1024, pids: this.opts.pidsLimit ?? 256 },
          network: "none",
          labels: { "superserve.standin/sandbox": body.name },
          annotations: {},
          maxLifetimeMs: 24 * 3600_000,
        },
        {},
      );
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      if (isSandqueueError(err) && err.code === ErrorCodes.IMAGE_NOT_FOUND) throw new HttpError(404, "template_not_found", msg);
      throw new HttpError(503, "unavailable", `could not start the sandbox: ${msg}`);
    }
    const s: SandboxRecord = {
      id: randomUUID(),
      name: body.name,
      status: "active",
      template,
      metadata,
      envVars,
      network: body.network as SandboxRecord["network"],
      timeoutSeconds: typeof body.timeout_seconds === "number" ? body.timeout_seconds : undefined,
      createdAt: new Date().toISOString(),
      token: this.newToken(),
      box,
      running: new Set(),
    };
    this.sandboxes.set(s.id, s);
    return s;
  }

  /** The data plane's sandbox and its checks: header routing, token, status. */
  private dataSandbox(req: IncomingMessage): SandboxRecord {
    const id = req.headers["x-superserve-sandbox-id"];
    if (typeof id !== "string" || !id) throw new HttpError(400, "missing_sandbox_id", "X-Superserve-Sandbox-Id header is required");
    const s = this.sandboxes.get(id);
    if (!s || s.status === "deleted") throw new HttpError(404, "sandbox_not_found", `sandbox ${id} not found`);
    const token = req.headers["x-access-token"];
    if (!sameSecret(typeof token === "string" ? token : undefined, s.token)) throw new HttpError(401, "invalid_token", "invalid or expired access token");
    if (s.status === "paused" || s.status === "pausing" || s.status === "resuming") throw new HttpError(503, "sandbox_not_active", `sandbox ${id} is ${s.status}`);
    if (s.status === "failed" || !s.box) throw new HttpError(503, "sandbox_failed", `sandbox ${id} has failed`);
    return s;
  }

  private async serveData(req: IncomingMessage, res: ServerResponse, url: URL, entry: SuperserveRequestLogEntry): Promise<void> {
    const method = req.method ?? "GET";
    let op: SuperserveOp;
    if (method === "POST" && url.pathname === "/exec") op = "exec";
    else if (method === "POST" && url.pathname === "/exec/stream") op = "exec-stream";
    else if (method === "POST" && url.pathname === "/files") op = "files-write";
    else if (method === "GET" && url.pathname === "/files") op = "files-read";
    else throw new HttpError(404, "not_found", `no route ${method} ${url.pathname}`);
    entry.op = op;
    const id = req.headers["x-superserve-sandbox-id"];
    if (typeof id === "string") entry.sandbox = id;
    const known = typeof id === "string" ? this.sandboxes.get(id) : undefined;
    await this.applyFaults(op, known ? [known.id, known.name] : []);
    const s = this.dataSandbox(req);
    if (op === "files-write" || op === "files-read") {
      const p = checkFilePath(url.searchParams.get("path"));
      if (url.searchParams.get("format") === "zip") throw new HttpError(400, "unsupported_format", "format=zip is not served by this stand-in");
      if (op === "files-write") await this.writeFile(s, p, await this.readBody(req), res);
      else await this.readFile(s, p, res);
      return;
    }
    const body = await this.readJson(req);
    if (typeof body.command !== "string" || body.command === "") throw new HttpError(400, "invalid_command", "command is required");
    await this.exec(s, body, op === "exec-stream", res);
  }

  private async writeFile(s: SandboxRecord, p: string, bytes: Buffer, res: ServerResponse): Promise<void> {
    const r = await s.box!.exec({
      argv: ["/bin/sh", "-c", 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"', "files", p],
      env: DEFAULT_ENV,
      stdin: bytes,
      timeoutMs: 120_000,
      maxOutputBytes: 64 * 1024,
    });
    if (r.exitCode !== 0) throw new HttpError(r.stderr.toString().includes("ermission") ? 403 : 400, "write_failed", `cannot write ${p}: ${r.stderr.toString().trim()}`);
    res.writeHead(204).end();
  }

  private async readFile(s: SandboxRecord, p: string, res: ServerResponse): Promise<void> {
    const max = this.opts.maxOutputBytes ?? 64 * MIB;
    const r = await s.box!.exec({
      argv: ["/bin/sh", "-c", '[ -e "$1" ] || exit 44; [ -d "$1" ] && exit 45; exec cat -- "$1"', "files", p],
      env: DEFAULT_ENV,
      timeoutMs: 120_000,
      maxOutputBytes: max,
    });
    if (r.exitCode === 44) throw new HttpError(404, "file_not_found", `${p} not found`);
    if (r.exitCode === 45) throw new HttpError(400, "is_directory", `${p} is a directory (format=zip downloads directories)`);
    if (r.exitCode !== 0 || r.stdoutTruncated) throw new HttpError(r.stdoutTruncated ? 413 : 403, "read_failed", `cannot read ${p}: ${r.stderr.toString().trim()}`);
    res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": r.stdout.length });
    res.end(r.stdout);
  }

  private async exec(s: SandboxRecord, body: Record<string, unknown>, streaming: boolean, res: ServerResponse): Promise<void> {
    const env = body.env === undefined ? {} : this.metadataOf(body.env, "env");
    const cwd = typeof body.working_dir === "string" && body.working_dir ? body.working_dir : "/workspace";
    const timeoutS = typeof body.timeout_s === "number" && body.timeout_s > 0 ? body.timeout_s : 300;
    const controller = new AbortController();
    s.running.add(controller);
    // A client that goes away takes its command with it.
    res.once("close", () => {
      if (!res.writableFinished) controller.abort();
    });
    const vanish = this.faults.take(streaming ? "exec-stream" : "exec", [s.id, s.name], ["vanish"]);
    let vanishTimer: NodeJS.Timeout | undefined;
    if (vanish?.type === "vanish") {
      vanishTimer = setTimeout(() => {
        void this.setStatus(s.id, vanish.status).then(() => {
          // The sandbox is gone: its connections with it, no finished event.
          res.destroy();
          if (vanish.status === "deleted") this.sandboxes.delete(s.id);
        });
      }, vanish.afterMs);
    }
    const decoders = { stdout: new StringDecoder("utf8"), stderr: new StringDecoder("utf8") };
    const send = (ev: Record<string, unknown>): void => {
      if (!res.destroyed) res.write(`data: ${JSON.stringify({ timestamp: new Date().toISOString(), ...ev })}\n\n`);
    };
    if (streaming) res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    try {
      const r = await s.box!.exec({
        argv: ["/bin/sh", "-c", body.command as string],
        env: { ...DEFAULT_ENV, ...s.envVars, ...env },
        cwd,
        timeoutMs: timeoutS * 1000,
        maxOutputBytes: this.opts.maxOutputBytes ?? 64 * MIB,
        signal: controller.signal,
        ...(streaming
          ? {
              onOutput: (stream: "stdout" | "stderr", chunk: Buffer) => {
                const text = decoders[stream].write(chunk);
                if (text) send({ [stream]: text });
              },
            }
          : {}),
      });
      if (res.destroyed) return;
      // Ended by the service (pause, failure, delete): the connection goes with the command.
      if (controller.signal.aborted) {
        res.destroy();
        return;
      }
      const error = r.limitHit === "timeout" ? `command timed out after ${timeoutS}s` : r.limitHit === "output" ? "output limit exceeded" : undefined;
      const exitCode = r.exitCode ?? (r.limitHit === "timeout" ? 124 : 137);
      if (streaming) {
        for (const stream of ["stdout", "stderr"] as const) {
          const rest = decoders[stream].end();
          if (rest) send({ [stream]: rest });
        }
        send({ exit_code: exitCode, finished: true, ...(error ? { error } : {}) });
        res.end();
      } else {
        sendJson(res, 200, { stdout: r.stdout.toString("utf8"), stderr: r.stderr.toString("utf8"), exit_code: exitCode, truncated: r.stdoutTruncated || r.stderrTruncated });
      }
    } catch (err) {
      if (res.destroyed) return;
      const msg = err instanceof Error ? err.message : String(err);
      if (streaming) {
        send({ finished: true, exit_code: -1, error: msg });
        res.end();
      } else {
        sendError(res, new HttpError(500, "exec_failed", msg));
      }
    } finally {
      clearTimeout(vanishTimer);
      s.running.delete(controller);
    }
  }

  /**
   * `POST /standin/faults` {match, action, count}, `DELETE /standin/faults`,
   * `POST /standin/sandboxes/{id}/status` {status}, `GET /standin/sandboxes`
   * (deleted ones too), `GET /standin/requests` (the request log).
   */
  private async admin(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    if (req.method === "GET" && url.pathname === "/standin/requests") {
      sendJson(res, 200, this.requests);
      return;
    }
    if (req.method === "GET" && url.pathname === "/standin/sandboxes") {
      sendJson(res, 200, [...this.sandboxes.values()].map((s) => ({ id: s.id, name: s.name, status: s.status, metadata: s.metadata })));
      return;
    }
    const faultRoutes = { faults: this.faults, parse: parseFault, body: () => this.readJson(req), refuse: (m: string) => new HttpError(400, "invalid_fault", m) };
    if (await serveFaultRoutes(req, res, url.pathname, faultRoutes)) return;
    const m = /^\/standin\/sandboxes\/([^/]+)\/status$/.exec(url.pathname);
    if (m && req.method === "POST") {
      const { status } = await this.readJson(req);
      if (status !== "paused" && status !== "resuming" && status !== "failed" && status !== "deleted") {
        throw new HttpError(400, "invalid_status", "status: expected paused, resuming, failed or deleted");
      }
      this.find(decodeURIComponent(m[1]!));
      await this.setStatus(decodeURIComponent(m[1]!), status);
      res.writeHead(204).end();
      return;
    }
    throw new HttpError(404, "not_found", `no admin route ${req.method} ${url.pathname}`);
  }
}
