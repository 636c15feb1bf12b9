/**
 * ProvisionerStandin: deer-flow's sandbox provisioner
 * (`docker/provisioner/app.py`, ../shared/reference/providers.md §3.1) and,
 * for each sandbox, the all-in-one sandbox HTTP API it points at (§3.2), on
 * 127.0.0.1. Each sandbox is a real local sandbox (LocalProvider) served on
 * its own port, as a NodePort Service would be.
 *
 * Provisioner (X-API-Key; FastAPI's {"detail": ...} errors):
 *   GET    /health                      {status: "ok"}
 *   POST   /api/sandboxes               {sandbox_id, thread_id} -> {sandbox_id, sandbox_url, status}; an existing id answers as it is
 *   GET    /api/sandboxes               {sandboxes: [...], count}
 *   GET    /api/sandboxes/{id}          {sandbox_id, sandbox_url, status} (Pod phase: Pending, Running), 404 when missing
 *   DELETE /api/sandboxes/{id}          {ok: true, sandbox_id} (missing ones too)
 * AIO sandbox (envelope {success, message, data}; optional key in X-AIO-API-Key, Bearer or ?api_key=):
 *   GET  /v1/sandbox                    context; 503 until the sandbox is ready (the readiness probe)
 *   POST /v1/bash/exec                  {command, exec_dir?, env?, timeout?, hard_timeout?, max_output_length?}
 *                                       -> {session_id, command_id, command, status, stdout, stderr, exit_code, offset, stderr_offset}
 *   POST /v1/file/upload                multipart: file, path
 *   GET  /v1/file/download?path=        the file's bytes
 * Admin (tests): POST/DELETE /standin/faults on the provisioner's port.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import type { Sandbox, SandboxProvider } from "../../providers/provider.js";
import { isSandqueueError } from "../../errors/index.js";
import { FaultTable, serveFaultAdmin, type FaultAction } from "../microsandbox/faults.js";
import { closeWithSockets, listen, loopbackUrl, readBody, sendJson } from "../http-server.js";

export interface ProvisionerStandinOptions {
  provider: SandboxProvider;
  port?: number;
  /** PROVISIONER_API_KEY: default a random one; null: PROVISIONER_AUTH_DISABLED. */
  apiKey?: string | null;
  /** The AIO sandboxes' own key (X-AIO-API-Key); default none. */
  sandboxApiKey?: string | null;
  /** SANDBOX_IMAGE's local stand-in. Default `host`. */
  image?: string;
  /** The Pod's memory limit (1Gi in app.py), MiB. */
  memoryMb?: number;
  /** pids limit of every sandbox. Default 256. */
  pids?: number;
  /** How long a new sandbox stays Pending before it starts, ms. Default 0. */
  startDelayMs?: number;
}

interface Box {
  id: string;
  status: "Pending" | "Running";
  server: http.Server;
  sockets: Set<Socket>;
  url: string;
  sandbox: Promise<Sandbox>;
  ready: Sandbox | null;
  /** Commands run one at a time per local sandbox (AIO serialises a session's too). */
  queue: Promise<unknown>;
}

const SAFE_ID = /^[A-Za-z0-9_-]+$/;
const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MAX_FILE = 1024 * 1024 * 1024;

export class ProvisionerStandin {
  readonly faults = new FaultTable();
  readonly apiKey: string | null;
  /** Provisioner and AIO operations received, in order (`create`, `exec`...). */
  readonly calls: string[] = [];
  private readonly boxes = new Map<string, Box>();
  private readonly server: http.Server;
  private readonly sockets = new Set<Socket>();
  private address = "";

  private constructor(private readonly opts: ProvisionerStandinOptions) {
    this.apiKey = opts.apiKey === undefined ? randomBytes(16).toString("hex") : opts.apiKey;
    this.server = http.createServer((req, res) => void this.safely(res, () => this.handleProvisioner(req, res)));
    this.server.on("connection", (s: Socket) => {
      this.sockets.add(s);
      s.once("close", () => this.sockets.delete(s));
    });
  }

  static async start(opts: ProvisionerStandinOptions): Promise<ProvisionerStandin> {
    const s = new ProvisionerStandin(opts);
    await listen(s.server, opts.port ?? 0);
    s.address = loopbackUrl(s.server);
    return s;
  }

  get url(): string {
    return this.address;
  }

  envVars(): Record<string, string> {
    return {
      SANDQUEUE_PROVISIONER_URL: this.url,
      ...(this.apiKey === null ? {} : { SANDQUEUE_PROVISIONER_API_KEY: this.apiKey }),
      ...(this.opts.sandboxApiKey ? { SANDQUEUE_AIO_API_KEY: this.opts.sandboxApiKey } : {}),
      SANDQUEUE_PROVISIONER_IMAGES: this.opts.image ?? "host",
    };
  }

  sandboxes(): string[] {
    return [...this.boxes.keys()].sort();
  }

  async stop(): Promise<void> {
    await closeWithSockets(this.server, this.sockets);
    const ids = [...this.boxes.keys()];
    await Promise.allSettled(ids.map((id) => this.remove(id)));
  }

  /** Deletes a sandbox (Service and Pod) as `DELETE /api/sandboxes/{id}` does. */
  async remove(id: string): Promise<void> {
    const box = this.boxes.get(id);
    if (!box) return;
    this.boxes.delete(id);
    await closeWithSockets(box.server, box.sockets);
    const sb = await box.sandbox.catch(() => null);
    await sb?.release();
  }

  private async safely(res: ServerResponse, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      if (!res.headersSent) sendJson(res, 500, { detail: String(err) });
      else res.destroy();
    }
  }

  /** Applies a delay and a failure fault for `op`; true when the request was answered. */
  private async injected(op: string, sandbox: string | undefined, res: ServerResponse, body: (m: string) => unknown): Promise<boolean> {
    this.calls.push(op);
    const delay = this.faults.take(op, sandbox, ["delay"]);
    if (delay?.type === "delay") await new Promise((r) => setTimeout(r, delay.ms));
    const fail = this.faults.take(op, sandbox, ["fail"]);
    if (fail?.type !== "fail") return false;
    const headers: Record<string, string> = fail.retryAfterSeconds === undefined ? {} : { "Retry-After": String(fail.retryAfterSeconds) };
    sendJson(res, fail.code, body(fail.message ?? `injected fault: HTTP ${fail.code}`), headers);
    return true;
  }

  private keyOk(given: string | undefined, want: string | null): boolean {
    if (want === null) return true;
    if (!given) return false;
    const a = Buffer.from(given);
    const b = Buffer.from(want);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  private async handleProvisioner(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin");
    const parts = url.pathname.split("/").filter(Boolean);
    if (url.pathname === "/standin/faults") return serveFaultAdmin(this.faults, req, res);
    if (url.pathname === "/health" && req.method === "GET") return sendJson(res, 200, { status: "ok" });
    if (parts[0] !== "api" || parts[1] !== "sandboxes" || parts.length > 3) return sendJson(res, 404, { detail: "Not Found" });
    const header = req.headers["x-api-key"];
    if (!this.keyOk(typeof header === "string" ? header : undefined, this.apiKey)) {
      return sendJson(res, 401, { detail: "Invalid or missing API key" });
    }
    const id = parts[2] === undefined ? undefined : decodeURIComponent(parts[2]);
    const detail = (m: string): unknown => ({ detail: m });
    if (id === undefined && req.method === "POST") {
      const raw = await readBody(req);
      let body: Record<string, unknown>;
      try {
        body = JSON.parse(raw.toString("utf8")) as Record<string, unknown>;
      } catch {
        return sendJson(res, 422, { detail: [{ type: "json_invalid", loc: ["body"], msg: "JSON decode error" }] });
      }
      const problems: unknown[] = [];
      if (typeof body.sandbox_id !== "string") problems.push({ type: "string_type", loc: ["body", "sandbox_id"], msg: "Input should be a valid string" });
      if (typeof body.thread_id !== "string" || !SAFE_ID.test(body.thread_id)) {
        problems.push({ type: "string_pattern_mismatch", loc: ["body", "thread_id"], msg: `String should match pattern '${SAFE_ID.source}'` });
      }
      if (problems.length) return sendJson(res, 422, { detail: problems });
      const sid = body.sandbox_id as string;
      if (await this.injected("create", sid, res, detail)) return;
      // Kubernetes names: sandbox-{id} and sandbox-{id}-svc must be DNS labels.
      if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(sid) || `sandbox-${sid}-svc`.length > 63) {
        return sendJson(res, 500, { detail: `Pod creation failed: Unprocessable Entity (invalid name sandbox-${sid})` });
      }
      const box = this.boxes.get(sid) ?? (await this.create(sid));
      return sendJson(res, 200, view(box));
    }
    if (id === undefined && req.method === "GET") {
      if (await this.injected("list", undefined, res, detail)) return;
      const sandboxes = [...this.boxes.values()].map(view);
      return sendJson(res, 200, { sandboxes, count: sandboxes.length });
    }
    if (id !== undefined && req.method === "GET") {
      if (await this.injected("get", id, res, detail)) return;
      const box = this.boxes.get(id);
      if (!box) return sendJson(res, 404, { detail: `Sandbox '${id}' not found` });
      return sendJson(res, 200, view(box));
    }
    if (id !== undefined && req.method === "DELETE") {
      if (await this.injected("delete", id, res, detail)) return;
      await this.remove(id);
      return sendJson(res, 200, { ok: true, sandbox_id: id });
    }
    return sendJson(res, 405, { detail: "Method Not Allowed" });
  }

  private async create(id: string): Promise<Box> {
    const sockets = new Set<Socket>();
    const server = http.createServer();
    const box: Box = { id, status: "Pending", server, sockets, url: "", sandbox: Promise.resolve(null as never), ready: null, queue: Promise.resolve() };
    server.on("request", (req: IncomingMessage, res: ServerResponse) => void this.safely(res, () => this.handleAio(box, req, res)));
    server.on("connection", (s: Socket) => {
      sockets.add(s);
      s.once("close", () => sockets.delete(s));
    });
    this.boxes.set(id, box);
    await listen(server, 0);
    box.url = loopbackUrl(server);
    const delay = this.opts.startDelayMs ?? 0;
    box.sandbox = (async () => {
      if (delay) await new Promise((r) => setTimeout(r, delay));
      const sb = await this.opts.provider.acquire(
        {
          image: this.opts.image ?? "host",
          limits: { memoryMb: this.opts.memoryMb ?? 1024, pids: this.opts.pids ?? 256 },
          network: "none",
          labels: {},
          annotations: {},
          maxLifetimeMs: 24 * 3600_000,
        },
        {},
      );
      if (this.boxes.get(id) !== box) {
        await sb.release();
        throw new Error("deleted while starting");
      }
      box.ready = sb;
      box.status = "Running";
      return sb;
    })();
    box.sandbox.catch(() => undefined);
    return box;
  }

  private async handleAio(box: Box, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://sandbox");
    const fail = (code: number, message: string): void => sendJson(res, code, { success: false, message, data: null });
    const auth = req.headers["x-aio-api-key"] ?? /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "")?.[1] ?? url.searchParams.get("api_key") ?? undefined;
    if (!this.keyOk(typeof auth === "string" ? auth : undefined, this.opts.sandboxApiKey ?? null)) return fail(401, "Unauthorized");
    const route = `${req.method} ${url.pathname}`;
    const op = { "GET /v1/sandbox": "ready", "POST /v1/bash/exec": "exec", "POST /v1/file/upload": "upload", "GET /v1/file/download": "download" }[route];
    if (!op) return fail(404, `Not Found: ${route}`);
    if (await this.injected(op, box.id, res, (m) => ({ success: false, message: m, data: null }))) return;
    const sb = box.ready;
    if (!sb) return fail(503, "sandbox is starting");
    switch (op) {
      case "ready":
        return sendJson(res, 200, { success: true, message: "Sandbox context", data: { sandbox_id: box.id, home_dir: "/workspace", version: "standin" } });
      case "exec":
        return this.bashExec(box, sb, req, res);
      case "upload": {
        const form = await new Response(await readBody(req), { headers: { "content-type": req.headers["content-type"] ?? "" } }).formData().catch(() => null);
        const file = form?.get("file");
        const path = form?.get("path");
        if (!form || !(file instanceof Blob) || typeof path !== "string" || !path.startsWith("/")) {
          return fail(422, "multipart fields file (a file) and path (an absolute path) are required");
        }
        const bytes = Buffer.from(await file.arrayBuffer());
        const r = await this.serial(box, () =>
          sb.exec({ argv: ["/bin/sh", "-c", 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"', "sh", path], env: { PATH: DEFAULT_PATH }, stdin: bytes, timeoutMs: 120_000, maxOutputBytes: 65536 }),
        );
        if (r.exitCode !== 0) return fail(500, `upload failed: ${r.stderr.toString().trim()}`);
        return sendJson(res, 200, { success: true, message: "File uploaded", data: { file_path: path, file_size: bytes.length, success: true } });
      }
      case "download": {
        const path = url.searchParams.get("path");
        if (!path || !path.startsWith("/")) return fail(422, "query path (an absolute path) is required");
        const r = await this.serial(box, () => sb.exec({ argv: ["cat", "--", path], env: { PATH: DEFAULT_PATH }, timeoutMs: 120_000, maxOutputBytes: MAX_FILE }));
        if (r.exitCode !== 0) return fail(404, `File not found: ${path}`);
        res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": r.stdout.length });
        res.end(r.stdout);
        return;
      }
    }
  }

  private serial<T>(box: Box, fn: () => Promise<T>): Promise<T> {
    const run = box.queue.then(fn);
    box.queue = run.catch(() => undefined);
    return run;
  }

  private async bashExec(box: Box, sb: Sandbox, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const fail = (code: number, message: string): void => sendJson(res, code, { success: false, message, data: null });
    let body: Record<string, unknown>;
    try {
      body = JSON.parse((await readBody(req)).toString("utf8")) as Record<string, unknown>;
    } catch {
      return fail(422, "body: expected JSON");
    }
    if (typeof body.command !== "string") return fail(422, "command: expected a string");
    const env: Record<string, string> = { PATH: DEFAULT_PATH, HOME: "/workspace" };
    if (body.env !== undefined && body.env !== null) {
      if (typeof body.env !== "object" || Object.values(body.env).some((v) => typeof v !== "string")) return fail(422, "env: expected an object of strings");
      Object.assign(env, body.env);
    }
    const execDir = typeof body.exec_dir === "string" ? body.exec_dir : "/workspace";
    const timeoutS = typeof body.hard_timeout === "number" ? body.hard_timeout : typeof body.timeout === "number" ? body.timeout : 600;
    const maxOut = typeof body.max_output_length === "number" ? body.max_output_length : 64 * 1024 * 1024;
    const vanish = this.faults.take("exec", box.id, ["vanish"]) as Extract<FaultAction, { type: "vanish" }> | null;
    const r = await this.serial(box, async () => {
      const timer = vanish ? setTimeout(() => void this.remove(box.id), vanish.afterMs) : undefined;
      try {
        return await sb.exec({ argv: ["/bin/bash", "-c", body.command as string], env, cwd: execDir, timeoutMs: timeoutS * 1000, maxOutputBytes: maxOut });
      } finally {
        clearTimeout(timer);
      }
    }).catch((err: unknown) => {
      throw new Error(isSandqueueError(err) ? err.message : String(err));
    });
    if (this.boxes.get(box.id) !== box) {
      // The Pod is gone: its connections are too.
      res.destroy();
      return;
    }
    const stdout = r.stdout.toString("utf8");
    const stderr = r.stderr.toString("utf8");
    sendJson(res, 200, {
      success: true,
      message: "Command executed",
      data: {
        session_id: randomUUID(),
        command_id: randomUUID(),
        command: body.command,
        status: r.limitHit === "timeout" ? "timed_out" : "completed",
        stdout,
        stderr,
        exit_code: r.limitHit === "timeout" ? null : (r.exitCode ?? -1),
        offset: stdout.length,
        stderr_offset: stderr.length,
      },
    });
  }

}

function view(box: Box): { sandbox_id: string; sandbox_url: string; status: string } {
  return { sandbox_id: box.id, sandbox_url: box.url, status: box.status };
}
