/**
 * IsloStandin: islo's documented REST API on 127.0.0.1 (see
 * standins/README.md and docs/PROVIDERS.md), two listeners as the service has
 * two bases: control (`/auth/token`, `/gateway/profiles`) and compute
 * (`/sandboxes`...). Each sandbox is a real local sandbox, so exec, files,
 * limits and kills are real. Gateway profiles are stored and checked
 * (references, in-use deletes); with the `egress` option they are enforced
 * by sandqueue's egress proxy, else the sandboxes have no network at all.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { randomBytes, randomUUID } from "node:crypto";
import path from "node:path";
import { Readable } from "node:stream";
import { createGunzip, gzipSync } from "node:zlib";
import { pack } from "tar-stream";
import type { Sandbox, SandboxProvider } from "../../providers/provider.js";
import { isSandqueueError, ErrorCodes } from "../../errors/index.js";
import { NetworkPolicySchema, type NetworkPolicy } from "../../producer/network-policy.js";
import { EgressGateway, type EgressJobSession } from "../../worker/egress/gateway.js";
import type { EgressConfig } from "../../worker/egress/config.js";
import { FaultTable, parseFault, type FaultAction, type IsloOp } from "./faults.js";
import { multipartField } from "./multipart.js";
import { closeServers, jsonObject, listenPlanes, loopbackUrl, readBody, sendJson } from "../http-server.js";

export interface IsloStandinOptions {
  /** Runs the sandboxes. The stand-in never closes it: its owner does, after stop(). */
  provider: SandboxProvider;
  host?: string;
  /** 0 (default): any free port. */
  controlPort?: number;
  computePort?: number;
  /** The API key `/auth/token` accepts; default a random one. */
  apiKey?: string;
  /** Lifetime of a session token (cookie_max_age), s. Default 600. */
  tokenTtlSeconds?: number;
  /** islo image -> local image; others are passed to the local provider as named. */
  images?: Record<string, string>;
  /** Memory of sandboxes created without memory_mb, MiB. Default 512. */
  defaultMemoryMb?: number;
  /** pids limit of every sandbox (islo has no such setting). Default 256. */
  pidsLimit?: number;
  /** Output kept per stream and exec; past it the command is killed and the result marked truncated. Default 16 MiB. */
  maxOutputBytes?: number;
  /** Largest request body (archives), bytes. Default 256 MiB. */
  maxBodyBytes?: number;
  /**
   * Enforce gateway profiles: a sandbox created with one gets a route to
   * sandqueue's egress proxy (worker/egress) applying the profile's rules,
   * pointed at by the proxy variables in every exec. Unset: profiles are
   * stored and checked only (the sandboxes have no network).
   */
  egress?: EgressConfig;
}

export type SandboxStatus = "creating" | "running" | "paused" | "stopped" | "failed";

interface ExecRecord {
  id: string;
  status: "running" | "completed" | "failed";
  exitCode: number | null;
  stdout: Buffer[];
  stderr: Buffer[];
  truncated: boolean;
  abort: AbortController;
}

interface SandboxRecord {
  id: string;
  name: string;
  status: SandboxStatus;
  image: string;
  workdir: string;
  env: Record<string, string>;
  spec: { vcpus: number; memory_mb: number; disk_gb: number };
  gatewayProfile: string | null;
  internetEnabled: boolean;
  createdAt: string;
  box: Sandbox;
  execs: Map<string, ExecRecord>;
  /** Execs run one after another on the local sandbox. */
  queue: Promise<unknown>;
  /** The gateway enforcing its profile (stand-in with `egress`), and what its execs get to reach it. */
  egress: { session: EgressJobSession; env: Record<string, string> } | null;
}

export interface GatewayRule {
  id: string;
  priority: number;
  host_pattern: string;
  path_pattern: string | null;
  methods: string[] | null;
  action: "allow" | "deny";
  rate_limit_rpm: number | null;
  provider_key: string | null;
  created_at: string;
}

export interface GatewayProfile {
  id: string;
  name: string;
  description: string | null;
  default_action: "allow" | "deny";
  internet_enabled: boolean;
  is_default: boolean;
  rules: GatewayRule[];
  created_at: string;
}

/** One line of the request log: what a test can assert on (never the Authorization header); status 0: no answer sent (dropped). */
export interface IsloRequestLogEntry {
  method: string;
  path: string;
  op: IsloOp | "admin" | "unknown";
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
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function sendError(res: ServerResponse, err: HttpError): void {
  const headers: Record<string, string> = err.retryAfterSeconds === undefined ? {} : { "Retry-After": String(err.retryAfterSeconds) };
  sendJson(res, err.status, { code: err.code, message: err.message, request_id: randomUUID() }, headers);
}

const FAIL_CODE_NAMES: Record<number, string> = {
  400: "INVALID_REQUEST",
  401: "AUTH_REQUIRED",
  403: "ACCESS_DENIED",
  404: "NOT_FOUND",
  409: "SANDBOX_INVALID_STATE",
  429: "RATE_LIMITED",
  500: "INTERNAL_ERROR",
  502: "BAD_GATEWAY",
  503: "RESOURCE_UNAVAILABLE",
  504: "TIMEOUT",
};

export class IsloStandin {
  readonly faults = new FaultTable();
  /** Every request served, in order. */
  readonly requests: IsloRequestLogEntry[] = [];
  readonly apiKey: string;
  private readonly sandboxes = new Map<string, SandboxRecord>();
  private readonly profiles = new Map<string, GatewayProfile>();
  private readonly tokens = new Map<string, number>();
  private readonly creating = new Set<string>();
  private readonly gateway: EgressGateway | null;
  private stopped = false;

  private constructor(
    private readonly opts: IsloStandinOptions,
    private readonly control: http.Server,
    private readonly compute: http.Server,
  ) {
    this.apiKey = opts.apiKey ?? `ak_${randomBytes(16).toString("hex")}`;
    this.gateway = opts.egress ? new EgressGateway(opts.egress) : null;
  }

  static async start(opts: IsloStandinOptions): Promise<IsloStandin> {
    const standin = new IsloStandin(opts, http.createServer(), http.createServer());
    await listenPlanes(
      opts.host ?? "127.0.0.1",
      [
        { plane: "control", server: standin.control, port: opts.controlPort },
        { plane: "compute", server: standin.compute, port: opts.computePort },
      ],
      (plane, req, res) => void standin.serve(plane, req, res),
    );
    return standin;
  }

  get controlUrl(): string {
    return loopbackUrl(this.control);
  }

  get computeUrl(): string {
    return loopbackUrl(this.compute);
  }

  /** What a worker needs to reach the stand-in, as KEY=value lines. */
  envFile(): string {
    return [`SANDQUEUE_ISLO_BASE_URL=${this.controlUrl}`, `SANDQUEUE_ISLO_COMPUTE_URL=${this.computeUrl}`, `SANDQUEUE_ISLO_API_KEY=${this.apiKey}`, ""].join("\n");
  }

  /** Names and statuses of the sandboxes that exist (what the list call shows). */
  sandboxList(): { name: string; status: SandboxStatus; gatewayProfile: string | null; internetEnabled: boolean; memoryMb: number }[] {
    return [...this.sandboxes.values()].map((s) => ({
      name: s.name,
      status: s.status,
      gatewayProfile: s.gatewayProfile,
      internetEnabled: s.internetEnabled,
      memoryMb: s.spec.memory_mb,
    }));
  }

  /** The gateway profiles stored, rules included. */
  profileList(): GatewayProfile[] {
    return [...this.profiles.values()].map((p) => ({ ...p, rules: p.rules.map((r) => ({ ...r })) }));
  }

  /**
   * Puts a sandbox in a state as islo's lifecycle does on its own
   * (pause_after_idle, auto-stop): its running execs end, failed.
   */
  setStatus(name: string, status: "paused" | "stopped" | "failed"): void {
    const sb = this.sandboxes.get(name);
    if (!sb) throw new Error(`no sandbox ${name}`);
    this.haltExecs(sb);
    sb.status = status;
  }

  /** Deletes a sandbox as an operator would, from outside. */
  async vanish(name: string): Promise<void> {
    const sb = this.sandboxes.get(name);
    if (sb) await this.remove(sb);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await closeServers(this.control, this.compute);
    await Promise.allSettled([...this.sandboxes.values()].map((s) => this.remove(s)));
    await this.gateway?.close();
  }

  // --- routing -------------------------------------------------------------

  private async serve(plane: "control" | "compute", req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin");
    const method = req.method ?? "GET";
    const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
    const route = this.route(plane, method, parts);
    const entry: IsloRequestLogEntry = { method, path: url.pathname, op: route?.op ?? "unknown", status: 0 };
    this.requests.push(entry);
    res.on("finish", () => (entry.status = res.statusCode));
    try {
      if (parts[0] === "standin") {
        entry.op = "admin";
        return await this.admin(method, parts, req, res);
      }
      if (!route) throw new HttpError(404, "NOT_FOUND", `no route ${method} ${url.pathname} on the ${plane} plane`);
      const fault = this.faults.take(route.op, route.name, ["fail", "delay", "drop"]);
      if (fault?.type === "drop") {
        // Served in full, but the answer never leaves: the client sees the connection cut.
        res.end = (() => (req.socket.destroy(), res)) as typeof res.end;
      }
      if (fault?.type === "delay") await new Promise((r) => setTimeout(r, fault.ms));
      if (fault?.type === "fail") {
        throw new HttpError(fault.code, FAIL_CODE_NAMES[fault.code] ?? "INTERNAL_ERROR", `injected fault (${fault.code})`, fault.retryAfterSeconds);
      }
      if (route.op !== "auth") this.authenticate(req);
      await route.run(url, req, res);
    } catch (err) {
      if (res.headersSent) return void res.destroy();
      if (err instanceof HttpError) return sendError(res, err);
      sendError(res, new HttpError(500, "INTERNAL_ERROR", (err as Error).message));
    }
  }

  private route(
    plane: "control" | "compute",
    method: string,
    p: string[],
  ): { op: IsloOp; name?: string; run: (url: URL, req: IncomingMessage, res: ServerResponse) => Promise<void> } | null {
    if (plane === "control") {
      if (method === "POST" && p.length === 2 && p[0] === "auth" && p[1] === "token") return { op: "auth", run: (_u, req, res) => this.authToken(req, res) };
      if (p[0] !== "gateway" || p[1] !== "profiles") return null;
      const id = p[2];
      if (p.length === 2 && method === "GET") return { op: "gateway", run: async (_u, _q, res) => sendJson(res, 200, this.profileList().map(profileResponse)) };
      if (p.length === 2 && method === "POST") return { op: "gateway", run: (_u, req, res) => this.createProfile(req, res) };
      if (p.length === 3 && method === "GET") return { op: "gateway", name: id, run: async (_u, _q, res) => sendJson(res, 200, { ...profileResponse(this.profile(id!)), rules: this.profile(id!).rules }) };
      if (p.length === 3 && method === "DELETE") return { op: "gateway", name: id, run: async (_u, _q, res) => this.deleteProfile(id!, res) };
      if (p.length === 4 && p[3] === "rules" && method === "POST") return { op: "gateway", name: id, run: (_u, req, res) => this.createRule(id!, req, res) };
      if (p.length === 5 && p[3] === "rules" && method === "DELETE") {
        return {
          op: "gateway",
          name: id,
          run: async (_u, _q, res) => {
            const profile = this.profile(id!);
            const before = profile.rules.length;
            profile.rules = profile.rules.filter((r) => r.id !== p[4]);
            if (profile.rules.length === before) throw new HttpError(404, "RESOURCE_NOT_FOUND", `no rule ${p[4]} in profile ${id}`);
            res.writeHead(204).end();
          },
        };
      }
      return null;
    }
    if (p[0] !== "sandboxes") return null;
    const name = p[1];
    if (p.length === 1 && method === "GET") return { op: "list", run: async (url, _q, res) => this.list(url, res) };
    if (p.length === 1 && method === "POST") return { op: "create", run: (_u, req, res) => this.create(req, res) };
    if (p.length === 2 && method === "GET") return { op: "get", name, run: async (_u, _q, res) => sendJson(res, 200, this.response(this.sandbox(name!))) };
    if (p.length === 2 && method === "DELETE") {
      return {
        op: "delete",
        name,
        run: async (_u, _q, res) => {
          await this.remove(this.sandbox(name!));
          res.writeHead(204).end();
        },
      };
    }
    if (p.length === 3 && method === "POST" && (p[2] === "pause" || p[2] === "resume" || p[2] === "stop")) {
      const op = p[2];
      return { op, name, run: async (_u, _q, res) => this.transition(this.sandbox(name!), op, res) };
    }
    if (p.length === 3 && p[2] === "exec" && method === "POST") return { op: "exec", name, run: (_u, req, res) => this.exec(this.sandbox(name!), req, res) };
    if (p.length === 4 && p[2] === "exec" && method === "GET") return { op: "exec-result", name, run: async (_u, _q, res) => this.execResult(this.sandbox(name!), p[3]!, res) };
    if (p.length === 3 && p[2] === "files") {
      if (method === "GET") return { op: "files", name, run: async (url, _q, res) => this.readFile(this.sandbox(name!), url, res) };
      if (method === "POST") return { op: "files", name, run: (url, req, res) => this.writeFile(this.sandbox(name!), url, req, res) };
    }
    if (p.length === 3 && p[2] === "files-archive") {
      if (method === "GET") return { op: "files-archive", name, run: async (url, _q, res) => this.downloadArchive(this.sandbox(name!), url, res) };
      if (method === "POST") return { op: "files-archive", name, run: (url, req, res) => this.uploadArchive(this.sandbox(name!), url, req, res) };
    }
    return null;
  }

  // --- auth ----------------------------------------------------------------

  private async authToken(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await this.json(req);
    if (typeof body.access_key !== "string" || body.access_key !== this.apiKey) throw new HttpError(401, "AUTH_REQUIRED", "invalid access key");
    const token = `st_${randomBytes(24).toString("hex")}`;
    const ttl = this.opts.tokenTtlSeconds ?? 600;
    this.tokens.set(token, Date.now() + ttl * 1000);
    sendJson(res, 200, { session_token: token, session_jwt: token, refresh_jwt: null, cookie_max_age: ttl });
  }

  private authenticate(req: IncomingMessage): void {
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? "");
    const expires = m ? this.tokens.get(m[1]!) : undefined;
    if (expires === undefined) throw new HttpError(401, "AUTH_REQUIRED", "missing or invalid bearer token");
    if (expires < Date.now()) {
      this.tokens.delete(m![1]!);
      throw new HttpError(401, "AUTH_REQUIRED", "session token expired");
    }
  }

  // --- sandboxes -----------------------------------------------------------

  private sandbox(name: string): SandboxRecord {
    const sb = this.sandboxes.get(name);
    if (!sb) throw new HttpError(404, "SANDBOX_NOT_FOUND", `sandbox '${name}' not found`);
    return sb;
  }

  private response(sb: SandboxRecord): Record<string, unknown> {
    return {
      id: sb.id,
      name: sb.name,
      status: sb.status,
      image: sb.image,
      workdir: sb.workdir,
      created_at: sb.createdAt,
      created_by: null,
      creation_phase: sb.status === "creating" ? "provisioning" : null,
      deleted_at: null,
      spec: sb.spec,
      gateway_profile: sb.gatewayProfile,
    };
  }

  private list(url: URL, res: ServerResponse): void {
    const q = url.searchParams;
    const prefix = q.get("name_prefix") ?? "";
    const statuses = q.getAll("status");
    const limit = Math.min(Math.max(Number(q.get("limit") ?? 50) || 50, 1), 100);
    const offset = Number(q.get("cursor") ?? q.get("offset") ?? 0) || 0;
    const all = [...this.sandboxes.values()]
      .filter((s) => s.name.startsWith(prefix) && (statuses.length === 0 || statuses.includes(s.status)))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.name.localeCompare(b.name));
    const items = all.slice(offset, offset + limit).map((s) => this.response(s));
    const next = offset + limit < all.length ? String(offset + limit) : null;
    sendJson(res, 200, { items, limit, offset, total: all.length, next_cursor: next });
  }

  private async create(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await this.json(req);
    const name = body.name ?? `sandbox-${randomBytes(4).toString("hex")}`;
    if (typeof name !== "string" || !NAME.test(name)) throw new HttpError(400, "VALIDATION_ERROR", "name: expected 1-128 characters of [A-Za-z0-9._-], starting alphanumeric");
    if (this.sandboxes.has(name) || this.creating.has(name)) throw new HttpError(409, "SANDBOX_ALREADY_EXISTS", `sandbox '${name}' already exists`);
    const image = body.image ?? "host";
    if (typeof image !== "string" || image === "") throw new HttpError(400, "VALIDATION_ERROR", "image: expected a string");
    const memory = body.memory_mb ?? this.opts.defaultMemoryMb ?? 512;
    if (!Number.isInteger(memory) || (memory as number) < 16) throw new HttpError(400, "VALIDATION_ERROR", "memory_mb: expected an integer >= 16");
    const env = body.env ?? {};
    if (typeof env !== "object" || env === null || Object.values(env).some((v) => v !== null && typeof v !== "string")) {
      throw new HttpError(400, "VALIDATION_ERROR", "env: expected an object of strings");
    }
    const workdir = body.workdir ?? "/workspace";
    if (typeof workdir !== "string" || !workdir.startsWith("/")) throw new HttpError(400, "VALIDATION_ERROR", "workdir: expected an absolute path");
    let gatewayProfile: string | null = null;
    let policy: NetworkPolicy | null = null;
    if (body.gateway_profile !== undefined && body.gateway_profile !== null) {
      const ref = String(body.gateway_profile);
      const profile = this.profiles.get(ref) ?? [...this.profiles.values()].find((p) => p.name === ref);
      if (!profile) throw new HttpError(400, "INVALID_REQUEST", `gateway profile '${ref}' not found`);
      gatewayProfile = profile.id;
      if (this.gateway) policy = enforceablePolicy(profile);
    }
    this.creating.add(name);
    try {
      let box: Sandbox;
      try {
        box = await this.opts.provider.acquire(
          {
            image: this.opts.images?.[image] ?? image,
            limits: { memoryMb: memory as number, pids: this.opts.pidsLimit ?? 256 },
            network: policy ? "proxy" : "none",
            labels: { "islo-standin/sandbox": name },
            annotations: {},
            maxLifetimeMs: 24 * 3600_000,
          },
          {},
        );
      } catch (err) {
        if (isSandqueueError(err) && err.code === ErrorCodes.IMAGE_NOT_FOUND) {
          throw new HttpError(400, "SANDBOX_PROVISIONING_FAILED", `image '${image}' not found`);
        }
        throw new HttpError(503, "RESOURCE_UNAVAILABLE", `could not start the sandbox: ${(err as Error).message}`);
      }
      const sb: SandboxRecord = {
        id: randomUUID(),
        name,
        status: "running",
        image,
        workdir,
        env: Object.fromEntries(Object.entries(env as Record<string, string | null>).filter((e): e is [string, string] => e[1] !== null)),
        spec: { vcpus: Number(body.vcpus ?? 2), memory_mb: memory as number, disk_gb: Number(body.disk_gb ?? 10) },
        gatewayProfile,
        internetEnabled: body.internet_enabled !== false,
        createdAt: new Date().toISOString(),
        box,
        execs: new Map(),
        queue: Promise.resolve(),
        egress: null,
      };
      if (policy && this.gateway && box.egress) {
        const session = await this.gateway.open({ jobId: name, policy, boundSecrets: {}, sandbox: box.egress });
        sb.egress = { session, env: { ...session.caEnv, ...session.proxyEnv } };
      }
      if (this.stopped) {
        await box.release();
        throw new HttpError(503, "RESOURCE_UNAVAILABLE", "shutting down");
      }
      this.sandboxes.set(name, sb);
      sendJson(res, 201, this.response(sb));
    } finally {
      this.creating.delete(name);
    }
  }

  private async remove(sb: SandboxRecord): Promise<void> {
    if (this.sandboxes.get(sb.name) === sb) this.sandboxes.delete(sb.name);
    this.haltExecs(sb);
    await sb.box.release();
    await sb.egress?.session.close();
  }

  private haltExecs(sb: SandboxRecord): void {
    for (const e of sb.execs.values()) if (e.status === "running") e.abort.abort();
  }

  private transition(sb: SandboxRecord, op: "pause" | "resume" | "stop", res: ServerResponse): void {
    const from = sb.status;
    const allowed = op === "resume" ? from === "paused" || from === "stopped" : from === "running";
    if (!allowed) throw new HttpError(409, "SANDBOX_INVALID_STATE", `cannot ${op} sandbox '${sb.name}' in status ${from}`);
    // A local sandbox cannot be frozen: pausing, like stopping, ends running execs.
    if (op !== "resume") this.haltExecs(sb);
    sb.status = op === "pause" ? "paused" : op === "stop" ? "stopped" : "running";
    sendJson(res, 200, this.response(sb));
  }

  // --- exec ----------------------------------------------------------------

  private async exec(sb: SandboxRecord, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await this.json(req);
    const command = body.command;
    if (!Array.isArray(command) || command.length === 0 || command.some((c) => typeof c !== "string")) {
      throw new HttpError(400, "VALIDATION_ERROR", "command: expected a non-empty array of strings");
    }
    const env = body.env ?? {};
    if (typeof env !== "object" || env === null || Object.values(env).some((v) => v !== null && typeof v !== "string")) {
      throw new HttpError(400, "VALIDATION_ERROR", "env: expected an object of strings");
    }
    const workdir = body.workdir ?? sb.workdir;
    if (typeof workdir !== "string" || !workdir.startsWith("/")) throw new HttpError(400, "VALIDATION_ERROR", "workdir: expected an absolute path");
    if (sb.status !== "running") throw new HttpError(400, "SANDBOX_INVALID_STATE", `sandbox '${sb.name}' is ${sb.status}`);
    const rec: ExecRecord = { id: randomUUID(), status: "running", exitCode: null, stdout: [], stderr: [], truncated: false, abort: new AbortController() };
    sb.execs.set(rec.id, rec);
    const merged: Record<string, string> = { ...sb.env };
    for (const [k, v] of Object.entries(env as Record<string, string | null>)) {
      if (v === null) delete merged[k];
      else merged[k] = v;
    }
    // islo's gateway sits in the VM's network path; here the proxy variables lead to it (the only route out).
    Object.assign(merged, sb.egress?.env);
    const vanish = this.faults.take("exec", sb.name, ["vanish"]) as Extract<FaultAction, { type: "vanish" }> | null;
    const cap = this.opts.maxOutputBytes ?? 16 * MIB;
    const run = async (): Promise<void> => {
      if (rec.abort.signal.aborted) {
        rec.status = "failed";
        return;
      }
      const timer = vanish ? setTimeout(() => void this.remove(sb), vanish.afterMs) : undefined;
      try {
        const r = await sb.box.exec({
          argv: command as string[],
          env: merged,
          cwd: workdir,
          timeoutMs: 24 * 3600_000,
          maxOutputBytes: cap,
          signal: rec.abort.signal,
          onOutput: (stream, chunk) => (stream === "stdout" ? rec.stdout : rec.stderr).push(chunk),
        });
        rec.truncated = r.stdoutTruncated || r.stderrTruncated;
        if (r.limitHit === "aborted") {
          rec.status = "failed";
          rec.exitCode = null;
        } else {
          rec.status = "completed";
          rec.exitCode = r.exitCode ?? 128 + 9;
        }
      } catch (err) {
        rec.status = "failed";
        rec.stderr.push(Buffer.from(`exec failed: ${(err as Error).message}\n`));
      } finally {
        clearTimeout(timer);
      }
    };
    sb.queue = sb.queue.then(run, run);
    sendJson(res, 200, { exec_id: rec.id, sandbox_id: sb.id, status: "running" });
  }

  private execResult(sb: SandboxRecord, execId: string, res: ServerResponse): void {
    const rec = sb.execs.get(execId);
    if (!rec) throw new HttpError(404, "RESOURCE_NOT_FOUND", `exec '${execId}' not found in sandbox '${sb.name}'`);
    // Output so far while it runs; islo's result fields are strings (UTF-8 text, not bytes).
    sendJson(res, 200, {
      exec_id: rec.id,
      status: rec.status,
      exit_code: rec.exitCode,
      stdout: Buffer.concat(rec.stdout).toString("utf8"),
      stderr: Buffer.concat(rec.stderr).toString("utf8"),
      truncated: rec.truncated,
    });
  }

  // --- files ---------------------------------------------------------------

  private filePath(url: URL): string {
    const p = url.searchParams.get("path");
    if (!p || !p.startsWith("/")) throw new HttpError(400, "VALIDATION_ERROR", "path: expected an absolute path");
    return path.posix.normalize(p);
  }

  private usable(sb: SandboxRecord): void {
    if (sb.status !== "running") throw new HttpError(400, "SANDBOX_INVALID_STATE", `sandbox '${sb.name}' is ${sb.status}`);
  }

  private async readFile(sb: SandboxRecord, url: URL, res: ServerResponse): Promise<void> {
    this.usable(sb);
    const p = this.filePath(url);
    const r = await this.serial(sb, () => sb.box.exec({ argv: ["cat", "--", p], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 60_000, maxOutputBytes: 256 * MIB }));
    if (r.exitCode !== 0) throw new HttpError(404, "FILE_NOT_FOUND", `file '${p}' not found`);
    res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": r.stdout.length });
    res.end(r.stdout);
  }

  private async writeFile(sb: SandboxRecord, url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.usable(sb);
    const p = this.filePath(url);
    const content = multipartField(req.headers["content-type"], await this.body(req), "file");
    if (typeof content === "string") throw new HttpError(400, "VALIDATION_ERROR", content);
    const tar = pack();
    tar.entry({ name: path.posix.basename(p), mode: 0o644 }, content);
    tar.finalize();
    await this.serial(sb, () => sb.box.putArchive(path.posix.dirname(p), tar as unknown as Readable)).catch((err: unknown) => {
      throw new HttpError(400, "FILE_OPERATION_ERROR", `cannot write '${p}': ${(err as Error).message}`);
    });
    sendJson(res, 200, { status: "uploaded" });
  }

  private async uploadArchive(sb: SandboxRecord, url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.usable(sb);
    const dir = this.filePath(url);
    const gz = multipartField(req.headers["content-type"], await this.body(req), "file");
    if (typeof gz === "string") throw new HttpError(400, "VALIDATION_ERROR", gz);
    const tar = Readable.from([gz]).pipe(createGunzip());
    await this.serial(sb, () => sb.box.putArchive(dir, tar)).catch((err: unknown) => {
      throw new HttpError(400, "FILE_OPERATION_ERROR", `cannot extract into '${dir}': ${(err as Error).message}`);
    });
    sendJson(res, 200, { status: "extracted" });
  }

  private async downloadArchive(sb: SandboxRecord, url: URL, res: ServerResponse): Promise<void> {
    this.usable(sb);
    const dir = this.filePath(url);
    const bytes = await this.serial(sb, async () => {
      const tar = await sb.box.getArchive(dir);
      const chunks: Buffer[] = [];
      for await (const c of tar) chunks.push(c as Buffer);
      return Buffer.concat(chunks);
    }).catch((err: unknown) => {
      throw new HttpError(404, "FILE_NOT_FOUND", `cannot archive '${dir}': ${(err as Error).message}`);
    });
    const gz = gzipSync(bytes, { level: 1 });
    res.writeHead(200, { "Content-Type": "application/gzip", "Content-Length": gz.length });
    res.end(gz);
  }

  /** Runs `fn` after the sandbox's queued execs (the local sandbox does one thing at a time). */
  private serial<T>(sb: SandboxRecord, fn: () => Promise<T>): Promise<T> {
    const p = sb.queue.then(fn, fn);
    sb.queue = p.catch(() => undefined);
    return p;
  }

  // --- gateway profiles ----------------------------------------------------

  private profile(id: string): GatewayProfile {
    const p = this.profiles.get(id);
    if (!p) throw new HttpError(404, "RESOURCE_NOT_FOUND", `gateway profile '${id}' not found`);
    return p;
  }

  private async createProfile(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const b = await this.json(req);
    if (typeof b.name !== "string" || b.name === "") throw new HttpError(422, "VALIDATION_ERROR", "name: field required");
    if ([...this.profiles.values()].some((p) => p.name === b.name)) throw new HttpError(409, "CACHE_CONFLICT", `gateway profile '${b.name}' already exists`);
    const action = b.default_action ?? "deny";
    if (action !== "allow" && action !== "deny") throw new HttpError(422, "VALIDATION_ERROR", "default_action: expected allow or deny");
    const p: GatewayProfile = {
      id: randomUUID(),
      name: b.name,
      description: typeof b.description === "string" ? b.description : null,
      default_action: action,
      internet_enabled: b.internet_enabled === true,
      is_default: b.is_default === true,
      rules: [],
      created_at: new Date().toISOString(),
    };
    this.profiles.set(p.id, p);
    sendJson(res, 200, profileResponse(p));
  }

  private deleteProfile(id: string, res: ServerResponse): void {
    const p = this.profile(id);
    const user = [...this.sandboxes.values()].find((s) => s.gatewayProfile === p.id);
    if (user) throw new HttpError(409, "CACHE_CONFLICT", `gateway profile '${p.name}' is used by sandbox '${user.name}'`);
    this.profiles.delete(id);
    res.writeHead(204).end();
  }

  private async createRule(id: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const profile = this.profile(id);
    const b = await this.json(req);
    if (typeof b.host_pattern !== "string" || b.host_pattern === "") throw new HttpError(422, "VALIDATION_ERROR", "host_pattern: field required");
    const action = b.action ?? "allow";
    if (action !== "allow" && action !== "deny") throw new HttpError(422, "VALIDATION_ERROR", "action: expected allow or deny");
    if (b.methods !== undefined && b.methods !== null && (!Array.isArray(b.methods) || b.methods.some((m) => typeof m !== "string"))) {
      throw new HttpError(422, "VALIDATION_ERROR", "methods: expected an array of strings");
    }
    if (b.rate_limit_rpm !== undefined && b.rate_limit_rpm !== null && (!Number.isInteger(b.rate_limit_rpm) || (b.rate_limit_rpm as number) < 1)) {
      throw new HttpError(422, "VALIDATION_ERROR", "rate_limit_rpm: expected an integer >= 1");
    }
    const rule: GatewayRule = {
      id: randomUUID(),
      priority: Number.isInteger(b.priority) ? (b.priority as number) : profile.rules.length * 10,
      host_pattern: b.host_pattern,
      path_pattern: typeof b.path_pattern === "string" ? b.path_pattern : null,
      methods: (b.methods as string[] | undefined) ?? null,
      action,
      rate_limit_rpm: (b.rate_limit_rpm as number | undefined) ?? null,
      provider_key: typeof b.provider_key === "string" ? b.provider_key : null,
      created_at: new Date().toISOString(),
    };
    profile.rules.push(rule);
    profile.rules.sort((a, c) => a.priority - c.priority);
    sendJson(res, 200, rule);
  }

  // --- admin and bodies ----------------------------------------------------

  private async admin(method: string, parts: string[], req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (parts[1] === "faults" && method === "POST") {
      const spec = parseFault(await this.json(req));
      if (typeof spec === "string") throw new HttpError(400, "VALIDATION_ERROR", spec);
      this.faults.add(spec);
      return sendJson(res, 200, { pending: this.faults.pending });
    }
    if (parts[1] === "faults" && method === "DELETE") {
      this.faults.clear();
      return void res.writeHead(204).end();
    }
    if (parts[1] === "state" && method === "POST") {
      const b = await this.json(req);
      if (typeof b.name !== "string" || !["paused", "stopped", "failed"].includes(b.status as string)) {
        throw new HttpError(400, "VALIDATION_ERROR", "expected {name, status: paused|stopped|failed}");
      }
      this.setStatus(b.name, b.status as "paused" | "stopped" | "failed");
      return void res.writeHead(204).end();
    }
    if (parts[1] === "sandboxes" && method === "GET") return sendJson(res, 200, this.sandboxList());
    if (parts[1] === "profiles" && method === "GET") return sendJson(res, 200, this.profileList());
    if (parts[1] === "requests" && method === "GET") return sendJson(res, 200, this.requests.filter((r) => r.op !== "admin"));
    throw new HttpError(404, "NOT_FOUND", "admin routes: POST/DELETE /standin/faults, POST /standin/state, GET /standin/sandboxes, GET /standin/profiles, GET /standin/requests");
  }

  private async body(req: IncomingMessage): Promise<Buffer> {
    const max = this.opts.maxBodyBytes ?? 256 * MIB;
    const body = await readBody(req, max);
    if (!body) throw new HttpError(413, "INVALID_REQUEST", `request body above ${max} bytes`);
    return body;
  }

  private async json(req: IncomingMessage): Promise<Record<string, unknown>> {
    const v = jsonObject(await this.body(req));
    if (!v) throw new HttpError(422, "VALIDATION_ERROR", "expected a JSON object body");
    return v;
  }
}

/**
 * A profile as a sandqueue network policy, for the egress proxy to enforce:
 * rules in priority order (first match wins, as islo's lowest priority
 * first), path_pattern as the one path. A rule the proxy's engine cannot
 * express (a host glob other than an exact name or `*.suffix`) makes the
 * create fail: the stand-in never runs a sandbox under rules it ignores.
 */
function enforceablePolicy(p: GatewayProfile): NetworkPolicy {
  const r = NetworkPolicySchema.safeParse({
    default: p.default_action,
    egress: p.rules.map((rule) => ({
      host: rule.host_pattern,
      action: rule.action,
      ...(rule.methods ? { methods: rule.methods } : {}),
      ...(rule.path_pattern ? { paths: [rule.path_pattern] } : {}),
      ...(rule.rate_limit_rpm ? { ratePerMinute: rule.rate_limit_rpm } : {}),
    })),
  });
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new HttpError(400, "INVALID_REQUEST", `gateway profile '${p.name}': the stand-in cannot enforce ${issue?.path.join(".") ?? "it"}: ${issue?.message ?? ""}`);
  }
  return r.data;
}

function profileResponse(p: GatewayProfile): Record<string, unknown> {
  return {
    id: p.id,
    name: p.name,
    description: p.description,
    default_action: p.default_action,
    internet_enabled: p.internet_enabled,
    is_default: p.is_default,
    rule_count: p.rules.length,
    created_at: p.created_at,
  };
}
