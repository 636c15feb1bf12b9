/**
 * NorthflankStandin: the parts of Northflank's API that @northflank/js-client
 * 0.9.5 speaks for the northflank provider, on 127.0.0.1 (the SDK's code is
 * the reference for the wire format; see standins/README.md). One listener,
 * as the SDK uses one host (its context's `host`) for both:
 *
 * - REST (`Authorization: Bearer`, optionally under `/v1/teams/{team}`):
 *   `/v1/projects/{project}/services` list, `services/deployment` create,
 *   `services/{id}` get and delete, `services/{id}/containers`;
 *   `secrets` create, list, get, delete (secret groups, the provider's
 *   leases). Answers are `{data, pagination?}` with status 200 (the SDK
 *   treats anything else as an error), errors `{error: {status, message}}`.
 * - exec: the V1 exec WebSocket at `/v1/command-exec/[teams/{team}/]projects/
 *   {project}/services/{id}`, one socket per command, JSON text frames:
 *   the client's `init` (API token and context: command, shell, instance,
 *   encoding, tty), then `payload` (stdin, in the session's encoding) and
 *   `stdInEnd`; the server's `init` {auth: "successful"|"failed"},
 *   `stdOut`/`stdErr` (data in the session's encoding: base64 or text),
 *   `completion` {exitCode, status, message?}, or `error` {message}.
 *   A socket that closes takes its command with it (the whole tree).
 *
 * Each service instance is a real local sandbox (one per instance), so exec,
 * files, limits and kills are real. The SDK's file copy (tar over exec with
 * base64 stdin/stdout) works unchanged against it. Deviation: the local
 * sandbox takes stdin whole, so a command starts once the client sends
 * `stdInEnd`, or after `stdinGraceMs` without any payload (clients that never
 * end stdin, such as the SDK's execServiceCommand).
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { randomBytes } from "node:crypto";
import { StringDecoder } from "node:string_decoder";
import { WebSocketServer, type WebSocket, type RawData } from "ws";
import type { Sandbox, SandboxProvider } from "../../providers/provider.js";
import { FaultTable, parseFault, type NorthflankOp } from "./faults.js";
import { serveFaultRoutes } from "../fault-admin.js";
import { closeServers, jsonObject, listen, loopbackUrl, readBody, sendJson, sameSecret } from "../http-server.js";

export interface NorthflankStandinOptions {
  /** Runs the instances. The stand-in never closes it: its owner does, after stop(). */
  provider: SandboxProvider;
  host?: string;
  /** 0 (default): any free port. */
  port?: number;
  /** The API token accepted; default a random `nf-…` one. */
  token?: string;
  /** The one project served. Default "sandqueue-standin". */
  projectId?: string;
  /** Image path -> local image. Default python:3.12-slim on "host". */
  images?: Record<string, string>;
  /** Services that exist before any client comes (to attach to), with their instance count. */
  attach?: { id: string; instances: number; image?: string }[];
  /** Memory of every instance (the plan's), MiB. Default 1024. */
  memoryMb?: number;
  /** pids limit of every instance. Default 256. */
  pidsLimit?: number;
  /** Output kept per stream and command; past it the command is killed. Default 64 MiB. */
  maxOutputBytes?: number;
  /** How long a command waits for a first stdin payload before it runs with none, ms. Default 100. */
  stdinGraceMs?: number;
}

type ContainerStatus = "TASK_RUNNING" | "TASK_FAILED";

interface InstanceRecord {
  name: string;
  createdAt: number;
  status: ContainerStatus;
  box: Sandbox | null;
  /** Sockets of commands running in it (dropped when the instance goes). */
  sockets: Set<WebSocket>;
  /** The local sandbox runs one command at a time: commands wait here for the one before. */
  queue: Promise<void>;
}

interface ServiceRecord {
  id: string;
  name: string;
  description: string | undefined;
  tags: string[];
  createdAt: string;
  deploymentPlan: string;
  imagePath: string;
  customCommand: string | undefined;
  /** Existed before the stand-in served anyone (an attach target). */
  precreated: boolean;
  deployment: "PENDING" | "COMPLETED" | "FAILED";
  instances: InstanceRecord[];
}

interface SecretRecord {
  id: string;
  name: string;
  description: string | undefined;
  tags: string[];
  secretType: string;
  priority: number;
  restrictions: unknown;
  createdAt: string;
}

/** One line of the request log: what a test can assert on (never a token). */
export interface NorthflankRequestLogEntry {
  method: string;
  path: string;
  op: NorthflankOp | "admin" | "unknown";
  service?: string;
  status: number;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const MIB = 1024 * 1024;
const DEFAULT_ENV = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME: "/workspace" };
const EXEC_PATH = /^\/v1\/command-exec\/(?:teams\/([^/]+)\/)?projects\/([^/]+)\/services\/([^/]+)$/;
const SIGNALS: Record<string, number> = { SIGKILL: 9, SIGTERM: 15, SIGINT: 2, SIGSEGV: 11, SIGABRT: 6, SIGPIPE: 13, SIGHUP: 1 };

function sendError(res: ServerResponse, err: HttpError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, err.status, { error: { status: err.status, message: err.message } });
}

/** The id Northflank derives from a name: lowercase, spaces as dashes. */
function idOf(name: string): string {
  return name.trim().toLowerCase().replace(/\s+/g, "-");
}

function stringArray(v: unknown, field: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || v.some((t) => typeof t !== "string")) throw new HttpError(400, `${field} must be an array of strings`);
  return v as string[];
}

export class NorthflankStandin {
  readonly faults = new FaultTable();
  /** Every request served, in order. */
  readonly requests: NorthflankRequestLogEntry[] = [];
  readonly token: string;
  readonly projectId: string;
  private readonly services = new Map<string, ServiceRecord>();
  private readonly secrets = new Map<string, SecretRecord>();
  private readonly images: Record<string, string>;
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: 512 * MIB });
  private stopped = false;

  private constructor(
    private readonly opts: NorthflankStandinOptions,
    private readonly server: http.Server,
  ) {
    this.token = opts.token ?? `nf-${randomBytes(24).toString("base64url")}`;
    this.projectId = opts.projectId ?? "sandqueue-standin";
    this.images = opts.images ?? { "python:3.12-slim": "host" };
  }

  static async start(opts: NorthflankStandinOptions): Promise<NorthflankStandin> {
    const server = http.createServer();
    const standin = new NorthflankStandin(opts, server);
    server.on("request", (req, res) => void standin.serve(req, res));
    server.on("upgrade", (req, socket, head) => void standin.upgrade(req, socket, head));
    for (const a of opts.attach ?? []) {
      await standin.createService({
        name: a.id,
        description: "an existing service (sandqueue attaches to it)",
        tags: ["precreated"],
        deploymentPlan: "nf-compute-20",
        imagePath: a.image ?? Object.keys(standin.images)[0] ?? "python:3.12-slim",
        customCommand: undefined,
        instances: a.instances,
        precreated: true,
      });
    }
    await listen(server, opts.port ?? 0, opts.host);
    return standin;
  }

  /** The SDK's context host. */
  get url(): string {
    return loopbackUrl(this.server);
  }

  /** What a worker needs to reach the stand-in (attach mode when a service was pre-created). */
  envVars(): Record<string, string> {
    const attached = [...this.services.values()].find((s) => s.precreated);
    return {
      SANDQUEUE_PROVIDER: "northflank",
      SANDQUEUE_NORTHFLANK_BASE_URL: this.url,
      SANDQUEUE_NORTHFLANK_API_TOKEN: this.token,
      SANDQUEUE_NORTHFLANK_PROJECT_ID: this.projectId,
      ...(attached ? { SANDQUEUE_NORTHFLANK_MODE: "attach", SANDQUEUE_NORTHFLANK_SERVICE_ID: attached.id } : {}),
    };
  }

  /** envVars() as KEY=value lines (the env file). */
  envFile(): string {
    return `${Object.entries(this.envVars())
      .map(([k, v]) => `${k}=${v}`)
      .join("\n")}\n`;
  }

  /** The services (as the list call shows them) with their instances. */
  serviceList(): { id: string; name: string; description: string | undefined; tags: string[]; createdAt: string; precreated: boolean; deployment: string; instances: { name: string; status: ContainerStatus }[] }[] {
    return [...this.services.values()].map((s) => ({
      id: s.id,
      name: s.name,
      description: s.description,
      tags: [...s.tags],
      createdAt: s.createdAt,
      precreated: s.precreated,
      deployment: s.deployment,
      instances: s.instances.map((i) => ({ name: i.name, status: i.status })),
    }));
  }

  secretList(): { id: string; name: string; description: string | undefined }[] {
    return [...this.secrets.values()].map((s) => ({ id: s.id, name: s.name, description: s.description }));
  }

  /** Every path under /workspace in each running instance of a service (what a job left). */
  async instanceFiles(serviceId: string): Promise<Record<string, string[]>> {
    const s = this.services.get(serviceId);
    if (!s) throw new Error(`no service ${serviceId}`);
    const out: Record<string, string[]> = {};
    for (const i of s.instances) {
      if (!i.box) continue;
      // Through the archive, not a command: the local sandbox may be running one (a job).
      const { extract } = await import("tar-stream");
      const ex = extract();
      (await i.box.getArchive("/workspace")).pipe(ex as unknown as NodeJS.WritableStream);
      const names: string[] = [];
      for await (const entry of ex as unknown as AsyncIterable<NodeJS.ReadableStream & { header: { name: string }; resume(): void }>) {
        const name = entry.header.name.replace(/^\.\/?/, "").replace(/\/$/, "");
        if (name) names.push(`/workspace/${name}`);
        entry.resume();
      }
      out[i.name] = names.sort();
    }
    return out;
  }

  /** An instance goes away as a node failure would take it: TASK_FAILED, its sandbox and sockets gone. */
  async vanishInstance(serviceId: string, instance: string): Promise<void> {
    const i = this.services.get(serviceId)?.instances.find((x) => x.name === instance);
    if (!i) throw new Error(`no instance ${instance} of ${serviceId}`);
    i.status = "TASK_FAILED";
    for (const ws of i.sockets) ws.terminate();
    const box = i.box;
    i.box = null;
    await box?.release();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const ws of this.wss.clients) ws.terminate();
    await closeServers(this.server);
    await new Promise((r) => this.wss.close(r));
    await Promise.allSettled([...this.services.values()].map((s) => this.dropInstances(s)));
    this.services.clear();
  }

  private async dropInstances(s: ServiceRecord): Promise<void> {
    await Promise.allSettled(
      s.instances.map(async (i) => {
        for (const ws of i.sockets) ws.terminate();
        const box = i.box;
        i.box = null;
        await box?.release();
      }),
    );
  }

  // ---- REST -------------------------------------------------------------------

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin");
    const entry: NorthflankRequestLogEntry = { method: req.method ?? "GET", path: url.pathname, op: "unknown", status: 0 };
    res.once("finish", () => (entry.status = res.statusCode));
    res.once("close", () => (entry.status ||= res.statusCode));
    this.requests.push(entry);
    try {
      if (this.stopped) throw new HttpError(503, "shutting down");
      if (url.pathname.startsWith("/standin/")) {
        entry.op = "admin";
        this.requireToken(req.headers.authorization);
        await this.admin(req, res, url);
        return;
      }
      await this.serveApi(req, res, url, entry);
    } catch (err) {
      if (err instanceof HttpError) sendError(res, err);
      else sendError(res, new HttpError(500, err instanceof Error ? err.message : String(err)));
    }
  }

  private requireToken(header: string | undefined): void {
    const m = /^Bearer (.+)$/.exec(header ?? "");
    if (!sameSecret(m?.[1], this.token)) throw new HttpError(401, "Unauthorized: missing or invalid API token");
  }

  /** Applies a matching delay and fail fault (after authentication, as the API's own limits come after it). */
  private async applyFaults(op: NorthflankOp, service: string | undefined): Promise<void> {
    const delay = this.faults.take(op, service, ["delay"]);
    if (delay?.type === "delay") await new Promise((r) => setTimeout(r, delay.ms));
    const fail = this.faults.take(op, service, ["fail"]);
    if (fail?.type === "fail") throw new HttpError(fail.code, `injected fault: ${fail.code}`);
  }

  private async readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
    const body = await readBody(req, 4 * MIB);
    if (!body) throw new HttpError(413, "request body too large");
    const v = jsonObject(body);
    if (!v) throw new HttpError(400, "request body must be a JSON object");
    return v;
  }

  private async serveApi(req: IncomingMessage, res: ServerResponse, url: URL, entry: NorthflankRequestLogEntry): Promise<void> {
    const method = req.method ?? "GET";
    const m = /^\/v1\/(?:teams\/[^/]+\/)?projects\/([^/]+)\/(services|secrets)(?:\/([^/]+))?(?:\/([^/]+))?$/.exec(url.pathname);
    if (!m) throw new HttpError(404, `no route ${method} ${url.pathname}`);
    const [, project, kind, idRaw, sub] = m;
    const id = idRaw === undefined ? undefined : decodeURIComponent(idRaw);
    const op = this.routeOp(method, kind!, id, sub);
    entry.op = op;
    if (id && id !== "deployment") entry.service = id;
    this.requireToken(req.headers.authorization);
    if (op === "unknown") throw new HttpError(404, `no route ${method} ${url.pathname}`);
    await this.applyFaults(op, entry.service);
    if (decodeURIComponent(project!) !== this.projectId) throw new HttpError(404, `project ${project} not found`);
    const data = await this.handle(op, id, req);
    const lose = this.faults.take(op, entry.service, ["lose"]);
    if (lose?.type === "lose") throw new HttpError(lose.code, `injected fault: ${op} done, answer lost`);
    sendJson(res, 200, data);
  }

  private routeOp(method: string, kind: string, id: string | undefined, sub: string | undefined): NorthflankOp | "unknown" {
    if (kind === "services") {
      if (!id) return method === "GET" ? "list-services" : "unknown";
      if (id === "deployment" && !sub) return method === "POST" ? "create-service" : "unknown";
      if (sub === "containers") return method === "GET" ? "list-containers" : "unknown";
      if (sub) return "unknown";
      return method === "GET" ? "get-service" : method === "DELETE" ? "delete-service" : "unknown";
    }
    if (sub) return "unknown";
    if (!id) return method === "POST" ? "create-secret" : method === "GET" ? "list-secrets" : "unknown";
    return method === "GET" ? "get-secret" : method === "DELETE" ? "delete-secret" : "unknown";
  }

  private async handle(op: NorthflankOp, id: string | undefined, req: IncomingMessage): Promise<unknown> {
    switch (op) {
      case "list-services": {
        const list = [...this.services.values()].map((s) => this.serviceSummary(s));
        return { data: { services: list }, pagination: { hasNextPage: false, count: list.length } };
      }
      case "create-service": {
        const s = await this.createFromBody(await this.readJson(req));
        return { data: this.serviceView(s) };
      }
      case "get-service":
        return { data: this.serviceView(this.findService(id!)) };
      case "delete-service": {
        const s = this.findService(id!);
        this.services.delete(s.id);
        await this.dropInstances(s);
        return { data: {} };
      }
      case "list-containers": {
        const s = this.findService(id!);
        const containers = s.instances.map((i) => ({ name: i.name, createdAt: i.createdAt, updatedAt: i.createdAt, status: i.status }));
        return { data: { containers }, pagination: { hasNextPage: false, count: containers.length } };
      }
      case "create-secret":
        return { data: this.secretView(this.createSecret(await this.readJson(req))) };
      case "list-secrets": {
        const list = [...this.secrets.values()].map((s) => ({ ...this.secretView(s), projectId: this.projectId }));
        return { data: { secrets: list }, pagination: { hasNextPage: false, count: list.length } };
      }
      case "get-secret":
        return { data: this.secretView(this.findSecret(id!)) };
      case "delete-secret": {
        this.secrets.delete(this.findSecret(id!).id);
        return { data: {} };
      }
      default:
        throw new HttpError(404, `no route for ${op}`);
    }
  }

  private findService(id: string): ServiceRecord {
    const s = this.services.get(id);
    if (!s) throw new HttpError(404, `service ${id} not found`);
    return s;
  }

  private findSecret(id: string): SecretRecord {
    const s = this.secrets.get(id);
    if (!s) throw new HttpError(404, `secret ${id} not found`);
    return s;
  }

  private serviceSummary(s: ServiceRecord): Record<string, unknown> {
    return {
      id: s.id,
      appId: `/${this.projectId}/${s.id}`,
      projectId: this.projectId,
      name: s.name,
      tags: s.tags,
      ...(s.description === undefined ? {} : { description: s.description }),
      serviceType: "deployment",
      disabledCI: true,
      disabledCD: false,
      status: { deployment: { status: s.deployment, reason: "DEPLOYING", lastTransitionTime: s.createdAt } },
    };
  }

  private serviceView(s: ServiceRecord): Record<string, unknown> {
    return {
      ...this.serviceSummary(s),
      createdAt: s.createdAt,
      billing: { deploymentPlan: s.deploymentPlan },
      servicePaused: false,
      deployment: {
        instances: s.instances.length,
        external: { imagePath: s.imagePath },
        ...(s.customCommand === undefined ? {} : { docker: { configType: "customCommand", customCommand: s.customCommand } }),
      },
      ports: [],
    };
  }

  private secretView(s: SecretRecord): Record<string, unknown> {
    return {
      id: s.id,
      name: s.name,
      ...(s.description === undefined ? {} : { description: s.description }),
      tags: s.tags,
      type: "secret",
      secretType: s.secretType,
      priority: s.priority,
      restrictions: s.restrictions,
      createdAt: s.createdAt,
    };
  }

  private async createFromBody(body: Record<string, unknown>): Promise<ServiceRecord> {
    const name = body.name;
    if (typeof name !== "string" || !/^[A-Za-z0-9][A-Za-z0-9 -]{1,38}[A-Za-z0-9]$/.test(name)) {
      throw new HttpError(400, "name: 3 to 40 letters, digits, spaces or dashes, starting and ending with a letter or digit");
    }
    if (body.description !== undefined && typeof body.description !== "string") throw new HttpError(400, "description must be a string");
    const billing = body.billing as { deploymentPlan?: unknown } | undefined;
    if (typeof billing?.deploymentPlan !== "string" || !billing.deploymentPlan) throw new HttpError(400, "billing.deploymentPlan is required");
    const dep = body.deployment as { instances?: unknown; external?: { imagePath?: unknown }; docker?: { customCommand?: unknown } } | undefined;
    if (!Number.isInteger(dep?.instances) || (dep!.instances as number) < 0 || (dep!.instances as number) > 8) {
      throw new HttpError(400, "deployment.instances: expected an integer from 0 to 8 (this stand-in's limit)");
    }
    if (typeof dep?.external?.imagePath !== "string" || !dep.external.imagePath) {
      throw new HttpError(400, "deployment.external.imagePath is required (this stand-in deploys external images only)");
    }
    if (this.services.has(idOf(name))) throw new HttpError(409, `a service with the name ${name} already exists`);
    return this.createService({
      name,
      description: body.description as string | undefined,
      tags: stringArray(body.tags, "tags"),
      deploymentPlan: billing.deploymentPlan,
      imagePath: dep.external.imagePath,
      customCommand: typeof dep.docker?.customCommand === "string" ? dep.docker.customCommand : undefined,
      instances: dep.instances as number,
      precreated: false,
    });
  }

  private async createService(o: Omit<ServiceRecord, "id" | "createdAt" | "deployment" | "instances"> & { instances: number }): Promise<ServiceRecord> {
    const id = idOf(o.name);
    const s: ServiceRecord = { ...o, id, createdAt: new Date().toISOString(), deployment: "PENDING", instances: [] };
    this.services.set(id, s);
    const image = this.images[o.imagePath];
    if (image === undefined) {
      // As the platform does: the service exists, its deployment fails pulling the image.
      s.deployment = "FAILED";
      return s;
    }
    for (let n = 0; n < o.instances; n++) {
      const box = await this.opts.provider.acquire(
        {
          image,
          limits: { memoryMb: this.opts.memoryMb ?? 1024, pids: this.opts.pidsLimit ?? 256 },
          network: "none",
          labels: { "northflank.standin/service": id },
          annotations: {},
          maxLifetimeMs: 24 * 3600_000,
        },
        {},
      );
      s.instances.push({ name: `${id}-${randomBytes(5).toString("hex")}-${randomBytes(3).toString("hex").slice(0, 5)}`, createdAt: Math.floor(Date.now() / 1000), status: "TASK_RUNNING", box, sockets: new Set(), queue: Promise.resolve() });
    }
    // Deleted while its instances started: they go too.
    if (this.services.get(id) !== s) await this.dropInstances(s);
    s.deployment = "COMPLETED";
    return s;
  }

  private createSecret(body: Record<string, unknown>): SecretRecord {
    if (typeof body.name !== "string" || !body.name.trim()) throw new HttpError(400, "name is required");
    if (!["environment", "arguments", "environment-arguments"].includes(body.secretType as string)) {
      throw new HttpError(400, "secretType: expected environment, arguments or environment-arguments");
    }
    if (typeof body.priority !== "number") throw new HttpError(400, "priority must be a number");
    const id = idOf(body.name);
    if (this.secrets.has(id)) throw new HttpError(409, `a secret group with the name ${body.name} already exists`);
    const s: SecretRecord = {
      id,
      name: body.name,
      description: typeof body.description === "string" ? body.description : undefined,
      tags: stringArray(body.tags, "tags"),
      secretType: body.secretType as string,
      priority: body.priority,
      restrictions: body.restrictions ?? { restricted: false },
      createdAt: new Date().toISOString(),
    };
    this.secrets.set(id, s);
    return s;
  }

  // ---- exec socket ------------------------------------------------------------

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin");
    const entry: NorthflankRequestLogEntry = { method: "GET", path: url.pathname, op: "exec", status: 0 };
    this.requests.push(entry);
    const refuse = (status: number, message: string): void => {
      entry.status = status;
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? "Error"}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${JSON.stringify({ error: { status, message } })}`);
    };
    const m = EXEC_PATH.exec(url.pathname);
    if (this.stopped || !m) return refuse(this.stopped ? 503 : 404, `no exec route ${url.pathname}`);
    const serviceId = decodeURIComponent(m[3]!);
    entry.service = serviceId;
    const delay = this.faults.take("exec", serviceId, ["delay"]);
    if (delay?.type === "delay") await new Promise((r) => setTimeout(r, delay.ms));
    const fail = this.faults.take("exec", serviceId, ["fail", "lose"]);
    if (fail && (fail.type === "fail" || fail.type === "lose")) return refuse(fail.code, `injected fault: ${fail.code}`);
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      entry.status = 101;
      this.session(ws, decodeURIComponent(m[2]!), serviceId);
    });
  }

  /** One command: init (auth, context), stdin, output frames, completion. */
  private session(ws: WebSocket, project: string, serviceId: string): void {
    const send = (type: string, data: unknown): void => {
      if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ type, data }));
    };
    const fail = (message: string): void => {
      send("error", { message });
      ws.close(1000);
    };
    let started = false;
    let encoding: BufferEncoding | undefined;
    const stdin: Buffer[] = [];
    let stdinBytes = 0;
    let sawPayload = false;
    let openGate: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (openGate = resolve));
    ws.on("message", (raw: RawData) => {
      let msg: { type?: string; data?: unknown };
      try {
        msg = JSON.parse(raw.toString()) as typeof msg;
      } catch {
        return fail("unable to parse message");
      }
      if (!started) {
        started = true;
        if (msg.type !== "init") return fail("the first message must be init");
        const data = msg.data as { auth?: { type?: string; apiToken?: string }; context?: Record<string, unknown> } | undefined;
        if (data?.auth?.type !== "apiToken" || !sameSecret(data.auth.apiToken, this.token)) {
          send("init", { auth: "failed", message: "Unauthorized: invalid API token" });
          ws.close(1000);
          return;
        }
        const ctx = data.context ?? {};
        encoding = ctx.encoding === undefined ? undefined : (String(ctx.encoding) as BufferEncoding);
        if (encoding !== undefined && !Buffer.isEncoding(encoding)) return fail(`encoding: ${String(ctx.encoding)} is not supported`);
        void this.run(ws, project, serviceId, ctx, encoding, send, fail, gate.then(() => Buffer.concat(stdin)));
        return;
      }
      if (msg.type === "payload") {
        sawPayload = true;
        const chunk = Buffer.from(String(msg.data ?? ""), encoding === "base64" ? "base64" : "utf8");
        stdinBytes += chunk.length;
        if (stdinBytes > 256 * MIB) return fail("stdin above 256 MiB");
        stdin.push(chunk);
      } else if (msg.type === "stdInEnd") {
        openGate();
      } else if (msg.type !== "resize") {
        fail(`unknown message type ${String(msg.type)}`);
      }
    });
    // Clients that never end stdin (execServiceCommand): the command runs without it.
    const grace = setTimeout(() => {
      if (!sawPayload) openGate();
    }, this.opts.stdinGraceMs ?? 100);
    ws.once("close", () => {
      clearTimeout(grace);
      openGate();
    });
  }

  private async run(
    ws: WebSocket,
    project: string,
    serviceId: string,
    ctx: Record<string, unknown>,
    encoding: BufferEncoding | undefined,
    send: (type: string, data: unknown) => void,
    fail: (message: string) => void,
    stdin: Promise<Buffer>,
  ): Promise<void> {
    const s = project === this.projectId ? this.services.get(serviceId) : undefined;
    if (!s) return fail(`service ${serviceId} not found in project ${project}`);
    if (ctx.tty === true) return fail("tty sessions are not served by this stand-in");
    const wanted = typeof ctx.instanceName === "string" ? ctx.instanceName : undefined;
    const inst = s.instances.find((i) => i.status === "TASK_RUNNING" && i.box && (wanted === undefined || i.name === wanted));
    if (!inst) return fail(wanted ? `instance ${wanted} of ${serviceId} is not running` : `service ${serviceId} has no running instance`);
    const argv = commandArgv(ctx.command, ctx.shell);
    if (!argv) return fail("command: expected a string or an array of strings");
    send("init", { auth: "successful", context: { instanceName: inst.name, containerName: serviceId } });
    inst.sockets.add(ws);
    const controller = new AbortController();
    // A client that goes away takes its command with it.
    ws.once("close", () => controller.abort());
    const vanish = this.faults.take("exec", serviceId, ["vanish"]);
    const vanishTimer = vanish?.type === "vanish" ? setTimeout(() => void this.vanishInstance(serviceId, inst.name), vanish.afterMs) : undefined;
    const decoders = { stdout: new StringDecoder("utf8"), stderr: new StringDecoder("utf8") };
    const encode = (stream: "stdout" | "stderr", chunk: Buffer): string => (encoding === undefined || encoding === "utf8" ? decoders[stream].write(chunk) : chunk.toString(encoding));
    const frame = (stream: "stdout" | "stderr"): string => (stream === "stdout" ? "stdOut" : "stdErr");
    try {
      const input = await stdin;
      // One command at a time per local sandbox (a container would run them side by side).
      let done: () => void = () => undefined;
      const turn = inst.queue;
      inst.queue = new Promise<void>((resolve) => (done = resolve));
      await turn;
      if (controller.signal.aborted || !inst.box) return done();
      const r = await inst.box
        .exec({
        argv,
        env: DEFAULT_ENV,
        ...(input.length > 0 ? { stdin: input } : {}),
        timeoutMs: 24 * 3600_000,
        maxOutputBytes: this.opts.maxOutputBytes ?? 64 * MIB,
        signal: controller.signal,
        onOutput: (stream, chunk) => {
          const text = encode(stream, chunk);
          if (text) send(frame(stream), text);
        },
      })
        .finally(done);
      if (controller.signal.aborted || ws.readyState !== ws.OPEN) return;
      for (const stream of ["stdout", "stderr"] as const) {
        const rest = encoding === undefined || encoding === "utf8" ? decoders[stream].end() : "";
        if (rest) send(frame(stream), rest);
      }
      const exitCode = r.exitCode ?? 128 + (SIGNALS[r.signal ?? "SIGKILL"] ?? 9);
      const message = r.limitHit === "output" ? "output limit exceeded" : r.signal ? `terminated by ${r.signal}` : undefined;
      send("completion", { exitCode, status: exitCode === 0 ? "Success" : "Failure", ...(message ? { message } : {}) });
      ws.close(1000);
    } catch (err) {
      fail(err instanceof Error ? err.message : String(err));
    } finally {
      clearTimeout(vanishTimer);
      inst.sockets.delete(ws);
    }
  }

  // ---- admin ------------------------------------------------------------------

  /**
   * `POST /standin/faults` {match, action, count}, `DELETE /standin/faults`,
   * `GET /standin/requests` (the request log), `GET /standin/services`
   * (with instances), `GET /standin/services/{id}/files` (what /workspace
   * holds in each instance).
   */
  private async admin(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    if (req.method === "GET" && url.pathname === "/standin/requests") return sendJson(res, 200, this.requests);
    if (req.method === "GET" && url.pathname === "/standin/services") return sendJson(res, 200, this.serviceList());
    const files = /^\/standin\/services\/([^/]+)\/files$/.exec(url.pathname);
    if (req.method === "GET" && files) {
      const id = decodeURIComponent(files[1]!);
      if (!this.services.has(id)) throw new HttpError(404, `service ${id} not found`);
      return sendJson(res, 200, await this.instanceFiles(id));
    }
    const faultRoutes = { faults: this.faults, parse: parseFault, body: () => this.readJson(req), refuse: (m: string) => new HttpError(400, m) };
    if (await serveFaultRoutes(req, res, url.pathname, faultRoutes)) return;
    throw new HttpError(404, `no admin route ${req.method} ${url.pathname}`);
  }
}

/** argv of a command as the exec context gives it: `shell: "none"` runs it as is, another shell runs the string under it. */
function commandArgv(command: unknown, shell: unknown): string[] | null {
  const list = Array.isArray(command) && command.every((c) => typeof c === "string") ? (command as string[]) : null;
  if (typeof command !== "string" && !list) return null;
  if (shell === "none") return list ?? (command as string).split(/\s+/).filter(Boolean);
  const text = list ? list.join(" ") : (command as string);
  const sh = typeof shell === "string" && shell.trim() ? shell.trim().split(/\s+/) : ["/bin/sh", "-c"];
  return [...sh, text];
}
