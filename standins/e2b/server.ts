/**
 * E2bStandin: E2B's sandbox API on 127.0.0.1, as the official `e2b` SDK
 * 2.51.0 speaks it (the SDK's code is the reference for the wire format).
 * Two listeners, as the service has two kinds of host:
 *
 * - control plane (the SDK's `apiUrl`): `X-API-Key`; `POST /v2/sandboxes`
 *   (create), `GET /v2/sandboxes` (list: `metadata` is one query parameter
 *   holding `k=v&…` with keys and values URL-encoded, `x-next-token`
 *   pages), `GET|DELETE /sandboxes/{id}`, `POST /sandboxes/{id}/timeout`,
 *   `POST /v2/sandboxes/{id}/connect`. Errors are `{code, message}`, code the
 *   HTTP status (the SDK reads `error.code === 404` on kill).
 * - envd (the SDK's `sandboxUrl`: every sandbox on one origin, named by the
 *   `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers, `X-Access-Token` the
 *   sandbox's envd token): `GET /health`, `GET|POST /files` (raw bytes down;
 *   multipart field `file` or octet-stream up), and the Connect protocol's
 *   `process.Process` service: `Start` (server streaming,
 *   `application/connect+json` envelopes: start, data (base64 bytes),
 *   keepalive, end, then the end-stream message), `SendSignal`,
 *   `SendInput`, `CloseStdin` (unary JSON).
 *
 * An unknown sandbox on envd is 502 `{sandboxId, message, code}`, as E2B's
 * edge answers. Each sandbox is a real local sandbox, so exec, files, limits
 * and kills are real. As in envd, a command whose client goes away keeps
 * running; SendSignal SIGKILL ends it (its whole tree: the local sandbox
 * can kill no less). A sandbox past its timeout is killed by the stand-in.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { randomBytes, randomUUID } from "node:crypto";
import path from "node:path";
import type { ExecResult, Sandbox, SandboxProvider } from "../../providers/provider.js";
import { isSandqueueError, ErrorCodes } from "../../errors/index.js";
import { serveFaultRoutes } from "../fault-admin.js";
import { closeServers, jsonObject, listenPlanes, loopbackUrl, readBody, sendJson, sameSecret } from "../http-server.js";
import { FaultTable, parseFault, type E2bOp } from "./faults.js";

export interface E2bStandinOptions {
  /** Runs the sandboxes. The stand-in never closes it: its owner does, after stop(). */
  provider: SandboxProvider;
  host?: string;
  /** 0 (default): any free port. */
  controlPort?: number;
  envdPort?: number;
  /** The API key accepted; default a random `e2b_…` one. */
  apiKey?: string;
  /** Template name -> local image. Default `base` on "host". */
  templates?: Record<string, string>;
  /** Memory of every sandbox (the template's), MiB. Default 1024. */
  memoryMb?: number;
  /** pids limit of every sandbox (E2B has no such setting). Default 256. */
  pidsLimit?: number;
  /** Output kept per stream and command; past it the command is killed. Default 64 MiB. */
  maxOutputBytes?: number;
  /** Largest request body (file uploads), bytes. Default 256 MiB. */
  maxBodyBytes?: number;
}

/** The envd version the stand-in reports: stdin close (0.5.2) and octet-stream uploads (0.5.7) are there. */
export const STANDIN_ENVD_VERSION = "0.5.7";
/** The port every sandbox's envd listens on (E2b-Sandbox-Port). */
const ENVD_PORT = "49983";

interface ProcessRecord {
  pid: number;
  controller: AbortController;
  /** Stdin, when the command was started with `stdin: true`: it starts at CloseStdin, with all of it. */
  stdin: Buffer[] | null;
  launch: () => void;
  /** Resolves when the command has ended and its stream is closed. */
  ended: Promise<void>;
}

interface SandboxRecord {
  id: string;
  template: string;
  metadata: Record<string, string>;
  envVars: Record<string, string>;
  allowInternetAccess: boolean | undefined;
  startedAt: Date;
  endAt: Date;
  token: string;
  box: Sandbox;
  processes: Map<number, ProcessRecord>;
  nextPid: number;
  /** The local sandbox runs one command at a time: each waits for the one before it. */
  queue: Promise<unknown>;
  /** Open Start streams: dropped with the sandbox. */
  streams: Set<ServerResponse>;
  expiry: NodeJS.Timeout;
}

/** One line of the request log: what a test can assert on (never a key or token). */
export interface E2bRequestLogEntry {
  plane: "control" | "envd";
  method: string;
  path: string;
  op: E2bOp | "admin" | "unknown";
  sandbox?: string;
  status: number;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly retryAfterSeconds?: number,
    /** Connect code, for envd RPCs. */
    readonly connectCode?: string,
  ) {
    super(message);
  }
}

const MIB = 1024 * 1024;
const DEFAULT_ENV = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME: "/workspace" };
/** Connect codes by HTTP status, for injected failures answered as envd would (codeToHttpStatus, reversed). */
const CONNECT_CODES: Record<number, string> = {
  400: "invalid_argument",
  401: "unauthenticated",
  403: "permission_denied",
  404: "not_found",
  409: "aborted",
  429: "resource_exhausted",
  500: "internal",
  502: "unavailable",
  503: "unavailable",
  504: "deadline_exceeded",
};

/** A Connect envelope: flags, 4-byte big-endian length, JSON. */
function envelope(flags: number, message: unknown): Buffer {
  const payload = Buffer.from(JSON.stringify(message));
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
}
const END_STREAM = 0b10;

/** The list call's metadata filter: one parameter holding a query string whose keys and values are URL-encoded again. */
function metadataFilter(param: string | null): [string, string][] {
  if (!param) return [];
  return [...new URLSearchParams(param).entries()].map(([k, v]) => [decodeURIComponent(k), decodeURIComponent(v)]);
}

/** The envd file path: absolute, or relative to the user's home (here /workspace); no NUL. */
function filePath(p: string | null): string {
  if (!p) throw new HttpError(400, "path is required");
  if (p.includes("\0")) throw new HttpError(400, "path contains a NUL byte");
  return path.posix.resolve(DEFAULT_ENV.HOME, p);
}

export class E2bStandin {
  readonly faults = new FaultTable();
  /** Every request served, in order. */
  readonly requests: E2bRequestLogEntry[] = [];
  readonly apiKey: string;
  private readonly sandboxes = new Map<string, SandboxRecord>();
  private readonly templates: Record<string, string>;
  private stopped = false;

  private constructor(
    private readonly opts: E2bStandinOptions,
    private readonly control: http.Server,
    private readonly envd: http.Server,
  ) {
    this.apiKey = opts.apiKey ?? `e2b_${randomBytes(20).toString("hex")}`;
    this.templates = opts.templates ?? { base: "host" };
  }

  static async start(opts: E2bStandinOptions): Promise<E2bStandin> {
    const standin = new E2bStandin(opts, http.createServer(), http.createServer());
    await listenPlanes(
      opts.host ?? "127.0.0.1",
      [
        { plane: "control", server: standin.control, port: opts.controlPort },
        { plane: "envd", server: standin.envd, port: opts.envdPort },
      ],
      (plane, req, res) => void standin.serve(plane, req, res),
    );
    return standin;
  }

  /** The SDK's apiUrl. */
  get controlUrl(): string {
    return loopbackUrl(this.control);
  }

  /** The SDK's sandboxUrl (every sandbox's envd). */
  get envdUrl(): string {
    return loopbackUrl(this.envd);
  }

  /** What a worker needs to reach the stand-in, as KEY=value lines. */
  envFile(): string {
    return [
      "SANDQUEUE_PROVIDER=e2b",
      `SANDQUEUE_E2B_API_URL=${this.controlUrl}`,
      `SANDQUEUE_E2B_SANDBOX_URL=${this.envdUrl}`,
      `SANDQUEUE_E2B_API_KEY=${this.apiKey}`,
      "",
    ].join("\n");
  }

  /** The running sandboxes, with their metadata and lifetime. */
  sandboxList(): { id: string; template: string; metadata: Record<string, string>; allowInternetAccess: boolean | undefined; endAt: Date; processes: number }[] {
    return [...this.sandboxes.values()].map((s) => ({
      id: s.id,
      template: s.template,
      metadata: { ...s.metadata },
      allowInternetAccess: s.allowInternetAccess,
      endAt: s.endAt,
      processes: s.processes.size,
    }));
  }

  /** Ends a sandbox as the service would (its timeout, a failure): commands killed, connections dropped, gone from the list. */
  async killSandbox(id: string): Promise<void> {
    const s = this.sandboxes.get(id);
    if (!s) return;
    this.sandboxes.delete(id);
    clearTimeout(s.expiry);
    for (const p of s.processes.values()) p.controller.abort();
    for (const res of s.streams) res.destroy();
    await s.box.release();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await closeServers(this.control, this.envd);
    await Promise.allSettled([...this.sandboxes.keys()].map((id) => this.killSandbox(id)));
  }

  private async serve(plane: "control" | "envd", req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin");
    const entry: E2bRequestLogEntry = { plane, method: req.method ?? "GET", path: url.pathname, op: "unknown", status: 0 };
    res.once("finish", () => (entry.status = res.statusCode));
    res.once("close", () => (entry.status ||= res.statusCode));
    this.requests.push(entry);
    try {
      if (this.stopped) throw new HttpError(503, "shutting down");
      if (plane === "control" && url.pathname.startsWith("/standin/")) {
        entry.op = "admin";
        this.requireApiKey(req);
        await this.admin(req, res, url);
      } else if (plane === "control") {
        await this.serveControl(req, res, url, entry);
      } else {
        await this.serveEnvd(req, res, url, entry);
      }
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(500, err instanceof Error ? err.message : String(err));
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const headers: Record<string, string> = e.retryAfterSeconds === undefined ? {} : { "Retry-After": String(e.retryAfterSeconds) };
      // Connect unary errors are {code: "<connect code>", message}; the REST APIs' {code: <status>, message}.
      if (e.connectCode) sendJson(res, e.status, { code: e.connectCode, message: e.message }, headers);
      else sendJson(res, e.status, { code: e.status, message: e.message }, headers);
    }
  }

  private requireApiKey(req: IncomingMessage): void {
    if (!sameSecret(req.headers["x-api-key"], this.apiKey)) throw new HttpError(401, "Invalid API key");
  }

  /** Applies a matching fail or delay fault (after authentication, as the service's own limits come after it). */
  private async applyFaults(op: E2bOp, sandbox: string | undefined): Promise<void> {
    const delay = this.faults.take(op, sandbox, ["delay"]);
    if (delay?.type === "delay") await new Promise((r) => setTimeout(r, delay.ms));
    const fail = this.faults.take(op, sandbox, ["fail"]);
    if (fail?.type === "fail") throw new HttpError(fail.code, `injected fault: ${fail.code}`, fail.retryAfterSeconds);
  }

  private async readBody(req: IncomingMessage): Promise<Buffer> {
    const max = this.opts.maxBodyBytes ?? 256 * MIB;
    const body = await readBody(req, max);
    if (!body) throw new HttpError(413, `request body above ${max} bytes`);
    return body;
  }

  private async readJson(req: IncomingMessage, body?: Buffer): Promise<Record<string, unknown>> {
    const v = jsonObject(body ?? (await this.readBody(req)));
    if (!v) throw new HttpError(400, "request body must be a JSON object");
    return v;
  }

  /** The fields every sandbox view has (list, get); `withAccess` adds the envd token (create, connect, get). */
  private view(s: SandboxRecord, withAccess: boolean): Record<string, unknown> {
    return {
      templateID: s.template,
      sandboxID: s.id,
      clientID: "standin",
      envdVersion: STANDIN_ENVD_VERSION,
      startedAt: s.startedAt.toISOString(),
      endAt: s.endAt.toISOString(),
      cpuCount: 1,
      memoryMB: this.opts.memoryMb ?? 1024,
      diskSizeMB: 1024,
      metadata: s.metadata,
      state: "running",
      ...(s.allowInternetAccess === undefined ? {} : { allowInternetAccess: s.allowInternetAccess }),
      ...(withAccess ? { envdAccessToken: s.token, trafficAccessToken: null, domain: null } : {}),
    };
  }

  private setTimeoutOf(s: SandboxRecord, seconds: number): void {
    clearTimeout(s.expiry);
    s.endAt = new Date(Date.now() + seconds * 1000);
    // The service kills a sandbox at its end time.
    s.expiry = setTimeout(() => void this.killSandbox(s.id).catch(() => undefined), seconds * 1000).unref();
  }

  private async serveControl(req: IncomingMessage, res: ServerResponse, url: URL, entry: E2bRequestLogEntry): Promise<void> {
    const method = req.method ?? "GET";
    const p = url.pathname;
    let m: RegExpExecArray | null;
    let op: E2bOp;
    let id: string | undefined;
    if (p === "/v2/sandboxes" && method === "POST") op = "create";
    else if (p === "/v2/sandboxes" && method === "GET") op = "list";
    else if ((m = /^\/sandboxes\/([^/]+)$/.exec(p)) && (method === "GET" || method === "DELETE")) [op, id] = [method === "GET" ? "get" : "kill", m[1]];
    else if ((m = /^\/sandboxes\/([^/]+)\/timeout$/.exec(p)) && method === "POST") [op, id] = ["timeout", m[1]];
    else if ((m = /^\/v2\/sandboxes\/([^/]+)\/connect$/.exec(p)) && method === "POST") [op, id] = ["connect", m[1]];
    else throw new HttpError(404, `no route ${method} ${p}`);
    // Named before the key is checked, so a refused request is logged as what it was.
    entry.op = op;
    if (id !== undefined) entry.sandbox = id = decodeURIComponent(id);
    this.requireApiKey(req);
    await this.applyFaults(op, id);
    const found = () => {
      const s = id === undefined ? undefined : this.sandboxes.get(id);
      if (!s) throw new HttpError(404, `sandbox ${id} not found`);
      return s;
    };
    switch (op) {
      case "create": {
        const s = await this.create(await this.readJson(req));
        const lose = this.faults.take("create", undefined, ["lose"]);
        if (lose?.type === "lose") throw new HttpError(lose.code, `injected fault: created ${s.id}, answer lost`);
        sendJson(res, 201, this.view(s, true));
        return;
      }
      case "list": {
        const filters = metadataFilter(url.searchParams.get("metadata"));
        const states = url.searchParams.get("state")?.split(",") ?? ["running", "paused"];
        const all = [...this.sandboxes.values()]
          .filter(() => states.includes("running"))
          .filter((s) => filters.every(([k, v]) => s.metadata[k] === v))
          .sort((a, b) => a.startedAt.getTime() - b.startedAt.getTime() || a.id.localeCompare(b.id));
        const limit = Math.max(1, Math.min(Number(url.searchParams.get("limit") ?? 100) || 100, 1000));
        const from = Number(url.searchParams.get("nextToken") ?? 0) || 0;
        const page = all.slice(from, from + limit);
        const headers: Record<string, string> = from + limit < all.length ? { "x-next-token": String(from + limit) } : {};
        sendJson(res, 200, page.map((s) => this.view(s, false)), headers);
        return;
      }
      case "get":
        sendJson(res, 200, this.view(found(), true));
        return;
      case "kill":
        found();
        await this.killSandbox(id!);
        res.writeHead(204).end();
        return;
      case "timeout": {
        const s = found();
        const { timeout } = await this.readJson(req);
        if (!Number.isInteger(timeout) || (timeout as number) < 0) throw new HttpError(400, "timeout: expected an integer number of seconds");
        this.setTimeoutOf(s, timeout as number);
        res.writeHead(204).end();
        return;
      }
      case "connect": {
        const s = found();
        const { timeout } = await this.readJson(req);
        if (Number.isInteger(timeout) && (timeout as number) > 0) this.setTimeoutOf(s, timeout as number);
        sendJson(res, 200, this.view(s, true));
        return;
      }
    }
  }

  /** An object of strings (metadata, envVars), or 400 naming the field. */
  private stringsOf(v: unknown, field: string): Record<string, string> {
    if (v === undefined || v === null) return {};
    if (typeof v !== "object" || Array.isArray(v)) throw new HttpError(400, `${field} must be an object of strings`);
    const out: Record<string, string> = {};
    for (const [k, val] of Object.entries(v)) {
      if (typeof val !== "string") throw new HttpError(400, `${field}.${k} must be a string`);
      out[k] = val;
    }
    return out;
  }

  private async create(body: Record<string, unknown>): Promise<SandboxRecord> {
    const template = body.templateID;
    if (typeof template !== "string" || !template) throw new HttpError(400, "templateID is required");
    const image = this.templates[template];
    if (image === undefined) throw new HttpError(404, `template '${template}' not found`);
    const metadata = this.stringsOf(body.metadata, "metadata");
    const envVars = this.stringsOf(body.envVars, "envVars");
    const timeout = body.timeout === undefined ? 300 : body.timeout;
    if (!Number.isInteger(timeout) || (timeout as number) < 1 || (timeout as number) > 86_400) throw new HttpError(400, "timeout: expected 1 to 86400 seconds");
    const id = `i${randomBytes(10).toString("hex")}`;
    let box: Sandbox;
    try {
      box = await this.opts.provider.acquire(
        {
          image,
          limits: { memoryMb: this.opts.memoryMb ?? 1024, pids: this.opts.pidsLimit ?? 256 },
          network: "none",
          labels: { "e2b.standin/sandbox": id },
          annotations: {},
          maxLifetimeMs: 86_400_000,
        },
        {},
      );
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      if (isSandqueueError(err) && err.code === ErrorCodes.IMAGE_NOT_FOUND) throw new HttpError(404, msg);
      throw new HttpError(503, `could not start the sandbox: ${msg}`);
    }
    const s: SandboxRecord = {
      id,
      template,
      metadata,
      envVars,
      allowInternetAccess: typeof body.allow_internet_access === "boolean" ? body.allow_internet_access : undefined,
      startedAt: new Date(),
      endAt: new Date(),
      token: randomBytes(24).toString("base64url"),
      box,
      processes: new Map(),
      nextPid: 1000,
      queue: Promise.resolve(),
      streams: new Set(),
      expiry: setTimeout(() => undefined, 0),
    };
    this.setTimeoutOf(s, timeout as number);
    this.sandboxes.set(id, s);
    return s;
  }

  private async serveEnvd(req: IncomingMessage, res: ServerResponse, url: URL, entry: E2bRequestLogEntry): Promise<void> {
    const method = req.method ?? "GET";
    const p = url.pathname;
    const rpc = p.startsWith("/process.Process/");
    const ops: Record<string, E2bOp> = {
      "GET /health": "health",
      "GET /files": "files-read",
      "POST /files": "files-write",
      "POST /process.Process/Start": "process-start",
      "POST /process.Process/SendSignal": "process-signal",
      "POST /process.Process/SendInput": "process-input",
      "POST /process.Process/CloseStdin": "process-close-stdin",
    };
    const op = ops[`${method} ${p}`];
    if (!op) throw new HttpError(rpc ? 501 : 404, `no route ${method} ${p}`, undefined, rpc ? "unimplemented" : undefined);
    entry.op = op;
    const id = req.headers["e2b-sandbox-id"];
    if (typeof id === "string") entry.sandbox = id;
    const s = typeof id === "string" && req.headers["e2b-sandbox-port"] === ENVD_PORT ? this.sandboxes.get(id) : undefined;
    // E2B's edge, for a sandbox it does not have (killed, timed out, never there).
    if (!s) {
      sendJson(res, 502, { sandboxId: id, message: "The sandbox was not found", code: 502 });
      return;
    }
    if (op === "health") {
      await this.applyFaults(op, s.id);
      res.writeHead(204).end();
      return;
    }
    if (!sameSecret(req.headers["x-access-token"], s.token)) throw new HttpError(401, "invalid access token", undefined, rpc ? "unauthenticated" : undefined);
    try {
      await this.applyFaults(op, s.id);
    } catch (err) {
      if (err instanceof HttpError && rpc && op !== "process-start") throw new HttpError(err.status, err.message, err.retryAfterSeconds, CONNECT_CODES[err.status] ?? "unknown");
      throw err;
    }
    if (op === "files-read") return this.readFile(s, filePath(url.searchParams.get("path")), res);
    if (op === "files-write") return this.writeFiles(s, req, url, res);
    if (op === "process-start") return this.startProcess(s, req, res);
    const body = await this.readJson(req);
    const pid = (body.process as { pid?: unknown } | undefined)?.pid;
    const proc = typeof pid === "number" ? s.processes.get(pid) : undefined;
    if (!proc) throw new HttpError(404, `process with pid ${String(pid)} not found`, undefined, "not_found");
    if (op === "process-signal") {
      if (body.signal !== "SIGNAL_SIGKILL" && body.signal !== "SIGNAL_SIGTERM" && body.signal !== 9 && body.signal !== 15) {
        throw new HttpError(400, "signal: expected SIGNAL_SIGKILL or SIGNAL_SIGTERM", undefined, "invalid_argument");
      }
      proc.controller.abort();
      // Answered once it is dead, so the next command finds nothing of it.
      await Promise.race([proc.ended, new Promise((r) => setTimeout(r, 10_000).unref())]);
    } else if (op === "process-input") {
      const data = (body.input as { stdin?: unknown } | undefined)?.stdin;
      if (typeof data !== "string") throw new HttpError(400, "input.stdin: expected base64 bytes", undefined, "invalid_argument");
      if (!proc.stdin) throw new HttpError(400, "the process was not started with stdin", undefined, "failed_precondition");
      proc.stdin.push(Buffer.from(data, "base64"));
    } else {
      proc.launch();
    }
    sendJson(res, 200, {});
  }

  /** Runs a short script in the local sandbox (files), with the sandbox's base environment. */
  private run(s: SandboxRecord, script: string, args: string[], stdin?: Buffer): Promise<ExecResult> {
    return s.box.exec({
      argv: ["/bin/sh", "-c", script, "files", ...args],
      env: DEFAULT_ENV,
      ...(stdin ? { stdin } : {}),
      timeoutMs: 120_000,
      maxOutputBytes: this.opts.maxOutputBytes ?? 64 * MIB,
    });
  }

  private async readFile(s: SandboxRecord, p: string, res: ServerResponse): Promise<void> {
    const r = await this.run(s, '[ -e "$1" ] || exit 44; [ -d "$1" ] && exit 45; exec cat -- "$1"', [p]);
    if (r.exitCode === 44) throw new HttpError(404, `path '${p}' does not exist`);
    if (r.exitCode === 45) throw new HttpError(400, `path '${p}' is a directory`);
    if (r.exitCode !== 0 || r.stdoutTruncated) throw new HttpError(r.stdoutTruncated ? 413 : 403, `cannot read ${p}: ${r.stderr.toString().trim()}`);
    res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": r.stdout.length });
    res.end(r.stdout);
  }

  /** Multipart (field `file`, the file name its path when the query has none) or one raw octet-stream body. */
  private async writeFiles(s: SandboxRecord, req: IncomingMessage, url: URL, res: ServerResponse): Promise<void> {
    const body = await this.readBody(req);
    const type = req.headers["content-type"] ?? "";
    const files: { path: string; data: Buffer }[] = [];
    if (type.startsWith("multipart/form-data")) {
      const form = await new Response(body, { headers: { "Content-Type": type } }).formData().catch(() => {
        throw new HttpError(400, "malformed multipart body");
      });
      for (const part of form.getAll("file")) {
        if (typeof part === "string") throw new HttpError(400, "file: expected a file part");
        files.push({ path: filePath(url.searchParams.get("path") ?? part.name), data: Buffer.from(await part.arrayBuffer()) });
      }
      if (files.length === 0) throw new HttpError(400, "no file part in the form");
    } else if (type.startsWith("application/octet-stream")) {
      if (req.headers["content-encoding"]) throw new HttpError(400, "content-encoding is not served by this stand-in");
      files.push({ path: filePath(url.searchParams.get("path")), data: body });
    } else {
      throw new HttpError(400, "expected multipart/form-data or application/octet-stream");
    }
    const written = [];
    for (const f of files) {
      const r = await this.run(s, 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"', [f.path], f.data);
      if (r.exitCode !== 0) {
        const why = r.stderr.toString().trim();
        throw new HttpError(/No space/.test(why) ? 507 : /ermission/.test(why) ? 403 : 400, `cannot write ${f.path}: ${why}`);
      }
      written.push({ name: path.posix.basename(f.path), type: "file", path: f.path });
    }
    sendJson(res, 200, written);
  }

  /** process.Process/Start: the command's events as Connect envelopes, as it runs. */
  private async startProcess(s: SandboxRecord, req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!String(req.headers["content-type"]).startsWith("application/connect+json")) {
      throw new HttpError(415, "expected application/connect+json", undefined, "invalid_argument");
    }
    const raw = await this.readBody(req);
    if (raw.length < 5 || raw[0]! & 1 || raw.readUInt32BE(1) !== raw.length - 5) throw new HttpError(400, "expected one uncompressed Connect envelope", undefined, "invalid_argument");
    const start = await this.readJson(req, raw.subarray(5));
    const cfg = start.process as { cmd?: unknown; args?: unknown; envs?: unknown; cwd?: unknown } | undefined;
    if (typeof cfg?.cmd !== "string" || !cfg.cmd) throw new HttpError(400, "process.cmd is required", undefined, "invalid_argument");
    const args = cfg.args === undefined ? [] : cfg.args;
    if (!Array.isArray(args) || args.some((a) => typeof a !== "string")) throw new HttpError(400, "process.args: expected strings", undefined, "invalid_argument");
    const envs = this.stringsOf(cfg.envs, "process.envs");
    const cwd = typeof cfg.cwd === "string" && cfg.cwd ? cfg.cwd : DEFAULT_ENV.HOME;
    const deadlineMs = Number(req.headers["connect-timeout-ms"] ?? 0);
    const keepaliveS = Number(req.headers["keepalive-ping-interval"] ?? 0);

    const pid = s.nextPid++;
    const controller = new AbortController();
    let running: Promise<ExecResult> | undefined;
    let ended!: () => void;
    const proc: ProcessRecord = {
      ended: new Promise<void>((r) => (ended = r)),
      pid,
      controller,
      stdin: start.stdin === true ? [] : null,
      launch: () => {
        if (running) return;
        running = s.queue.then(() => s.box.exec({
          argv: [cfg.cmd as string, ...(args as string[])],
          env: { ...DEFAULT_ENV, ...s.envVars, ...envs },
          cwd,
          ...(proc.stdin ? { stdin: Buffer.concat(proc.stdin) } : {}),
          timeoutMs: 24 * 3600_000,
          maxOutputBytes: this.opts.maxOutputBytes ?? 64 * MIB,
          signal: controller.signal,
          onOutput: (stream, chunk) => send({ event: { data: { [stream]: chunk.toString("base64") } } }),
        }));
        s.queue = running.catch(() => undefined);
        launched();
      },
    };
    let launched!: () => void;
    const launchedP = new Promise<void>((r) => (launched = r));
    s.processes.set(pid, proc);
    s.streams.add(res);
    // A client that goes away stops hearing; the command runs on (envd's rule), until it ends or is signalled.
    const send = (message: unknown, flags = 0): void => {
      if (!res.destroyed && !res.writableEnded) res.write(envelope(flags, message));
    };
    const vanish = this.faults.take("process-start", s.id, ["vanish"]);
    const timers: NodeJS.Timeout[] = [];
    if (vanish?.type === "vanish") timers.push(setTimeout(() => void this.killSandbox(s.id).catch(() => undefined), vanish.afterMs));
    let deadlineHit = false;
    if (deadlineMs > 0) {
      timers.push(
        setTimeout(() => {
          deadlineHit = true;
          controller.abort();
        }, deadlineMs),
      );
    }
    res.writeHead(200, { "Content-Type": "application/connect+json" });
    send({ event: { start: { pid } } });
    if (keepaliveS > 0) {
      const ka = setInterval(() => send({ event: { keepalive: {} } }), keepaliveS * 1000);
      timers.push(ka);
    }
    if (!proc.stdin) proc.launch();
    try {
      // A command with stdin starts at CloseStdin (the local sandbox takes stdin whole), or is signalled before.
      await Promise.race([launchedP, new Promise((r) => controller.signal.addEventListener("abort", r, { once: true }))]);
      const r = running ? await running : undefined;
      if (!this.sandboxes.has(s.id)) {
        res.destroy();
        return;
      }
      if (deadlineHit) {
        send({ error: { code: "deadline_exceeded", message: `the command's deadline of ${deadlineMs} ms passed` } }, END_STREAM);
      } else {
        const exited = r !== undefined && r.exitCode !== null;
        send({
          event: {
            end: exited
              ? { exitCode: r.exitCode, exited: true, status: `exit status ${r.exitCode}` }
              : { exitCode: -1, exited: false, status: `signal: ${r?.signal === "SIGTERM" ? "terminated" : "killed"}` },
          },
        });
        send({}, END_STREAM);
      }
      res.end();
    } catch (err) {
      send({ error: { code: "internal", message: err instanceof Error ? err.message : String(err) } }, END_STREAM);
      res.end();
    } finally {
      for (const t of timers) clearTimeout(t);
      s.processes.delete(pid);
      s.streams.delete(res);
      ended();
    }
  }

  /**
   * `POST /standin/faults` {match, action, count}, `DELETE /standin/faults`,
   * `GET /standin/sandboxes`, `GET /standin/requests` (the request log),
   * `POST /standin/sandboxes/{id}/kill` (the service ends it).
   */
  private async admin(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    if (req.method === "GET" && url.pathname === "/standin/requests") return sendJson(res, 200, this.requests);
    if (req.method === "GET" && url.pathname === "/standin/sandboxes") return sendJson(res, 200, this.sandboxList());
    const faultRoutes = { faults: this.faults, parse: parseFault, body: () => this.readJson(req), refuse: (m: string) => new HttpError(400, m) };
    if (await serveFaultRoutes(req, res, url.pathname, faultRoutes)) return;
    const m = /^\/standin\/sandboxes\/([^/]+)\/kill$/.exec(url.pathname);
    if (m && req.method === "POST") {
      const id = decodeURIComponent(m[1]!);
      if (!this.sandboxes.has(id)) throw new HttpError(404, `sandbox ${id} not found`);
      await this.killSandbox(id);
      res.writeHead(204).end();
      return;
    }
    throw new HttpError(404, `no admin route ${req.method} ${url.pathname}`);
  }
}
