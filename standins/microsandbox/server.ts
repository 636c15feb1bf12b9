/**
 * MicrosandboxStandin: the JSON-RPC 2.0 server of microsandbox 0.2.x
 * (`msbserver`, ../shared/reference/providers.md §5.1) on 127.0.0.1, each
 * sandbox a real local sandbox (LocalProvider), so commands, exit codes,
 * memory limits and kills are genuine.
 *
 *   GET  /api/v1/health
 *   POST /api/v1/rpc   Authorization: Bearer <key> (or Proxy-Authorization)
 *     sandbox.start {sandbox, namespace, config?{image, memory, cpus, envs[], workdir, ...}}  -> message string
 *     sandbox.stop {sandbox, namespace}                                                    -> message string
 *     sandbox.metrics.get {sandbox?, namespace ("*": all namespaces)}   -> {sandboxes:[{namespace, name, running, cpu_usage, memory_usage, disk_usage}]}
 *     sandbox.command.run {sandbox, namespace, command, args[]}
 *                          -> {command, args, exit_code, success, output:[{stream, text}]}
 *
 * command.run is what the in-VM portal does: no shell, no stdin, the
 * sandbox's envs and workdir, output decoded as UTF-8 (lossy) and split into
 * lines per stream without their line ends. Admin (no auth, tests only):
 * POST/DELETE /standin/faults.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { randomBytes, timingSafeEqual } from "node:crypto";
import type { Sandbox, SandboxProvider } from "../../providers/provider.js";
import { isSandqueueError } from "../../errors/index.js";
import { FaultTable, serveFaultAdmin, type FaultAction } from "./faults.js";
import { closeWithSockets, listen, loopbackUrl, readBody, sendJson } from "../http-server.js";

export interface MicrosandboxStandinOptions {
  /** Runs the sandboxes. Never closed here: its owner does, after stop(). */
  provider: SandboxProvider;
  port?: number;
  /** Bearer key clients must send; default a random one; null: none asked. */
  apiKey?: string | null;
  /** Image -> local image. */
  images?: Record<string, string>;
  /** Local image for unmapped images (default `host`); null: they fail as a failed pull. */
  defaultImage?: string | null;
  /** Memory of sandboxes started without config.memory, MiB. Default 1024 (microsandbox's default). */
  defaultMemoryMb?: number;
  /** pids limit of every sandbox (microsandbox has no such setting). Default 256. */
  pids?: number;
  /** Output kept per stream and command (the portal keeps all; this bounds the stand-in). Default 64 MiB. */
  maxOutputBytes?: number;
}

interface Box {
  namespace: string;
  name: string;
  sandbox: Sandbox;
  env: Record<string, string>;
  workdir: string;
  /** Commands run one at a time per local sandbox; the portal allows more, the stand-in queues them. */
  queue: Promise<unknown>;
}

type RpcId = string | number | null;
class RpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const NO_TIMEOUT_MS = 24 * 3600_000;

export class MicrosandboxStandin {
  readonly faults = new FaultTable();
  readonly apiKey: string | null;
  /** JSON-RPC methods received, in order (tests count calls). */
  readonly calls: string[] = [];
  private readonly boxes = new Map<string, Box>();
  private readonly starting = new Map<string, Promise<Box>>();
  private readonly server: http.Server;
  private readonly sockets = new Set<Socket>();
  private address = "";

  private constructor(private readonly opts: MicrosandboxStandinOptions) {
    this.apiKey = opts.apiKey === undefined ? randomBytes(16).toString("hex") : opts.apiKey;
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) sendJson(res, 500, { error: String(err) });
        else res.destroy();
      });
    });
    this.server.on("connection", (s: Socket) => {
      this.sockets.add(s);
      s.once("close", () => this.sockets.delete(s));
    });
  }

  static async start(opts: MicrosandboxStandinOptions): Promise<MicrosandboxStandin> {
    const s = new MicrosandboxStandin(opts);
    await listen(s.server, opts.port ?? 0);
    s.address = loopbackUrl(s.server);
    return s;
  }

  get url(): string {
    return this.address;
  }

  /** What a worker needs to reach it (KEY=value). */
  envVars(): Record<string, string> {
    return { MSB_SERVER_URL: this.url, ...(this.apiKey === null ? {} : { MSB_API_KEY: this.apiKey }) };
  }

  /** `namespace/name` of every sandbox running now. */
  sandboxes(): string[] {
    return [...this.boxes.keys()].sort();
  }

  /** Deletes a sandbox as if its VM had gone away. */
  async vanish(namespace: string, name: string): Promise<void> {
    const box = this.boxes.get(key(namespace, name));
    this.boxes.delete(key(namespace, name));
    await box?.sandbox.release();
  }

  async stop(): Promise<void> {
    await closeWithSockets(this.server, this.sockets);
    const boxes = [...this.boxes.values()];
    this.boxes.clear();
    await Promise.allSettled([...this.starting.values()].map((p) => p.then((b) => b.sandbox.release())));
    await Promise.allSettled(boxes.map((b) => b.sandbox.release()));
  }

  private authorized(req: IncomingMessage): boolean {
    if (this.apiKey === null) return true;
    const header = req.headers.authorization ?? req.headers["proxy-authorization"];
    const m = typeof header === "string" ? /^Bearer\s+(.+)$/i.exec(header.trim()) : null;
    if (!m) return false;
    const given = Buffer.from(m[1]!);
    const want = Buffer.from(this.apiKey);
    return given.length === want.length && timingSafeEqual(given, want);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin");
    if (url.pathname === "/standin/faults") return serveFaultAdmin(this.faults, req, res);
    if (req.method === "GET" && url.pathname === "/api/v1/health") return sendJson(res, 200, { status: "ok", message: "Service is healthy" });
    if (url.pathname !== "/api/v1/rpc") return sendJson(res, 404, { error: "Not Found" });
    if (req.method !== "POST") return sendJson(res, 405, { error: "Method Not Allowed" });
    if (!this.authorized(req)) return sendJson(res, 401, rpcError(null, -32001, "Invalid or missing API key"));
    const body = await readBody(req);
    let msg: { jsonrpc?: unknown; method?: unknown; params?: unknown; id?: unknown };
    try {
      msg = JSON.parse(body.toString("utf8")) as typeof msg;
    } catch {
      return sendJson(res, 200, rpcError(null, -32700, "Parse error"));
    }
    const id = (typeof msg.id === "string" || typeof msg.id === "number" ? msg.id : null) as RpcId;
    if (msg.jsonrpc !== "2.0" || typeof msg.method !== "string") return sendJson(res, 200, rpcError(id, -32600, "Invalid Request"));
    const params = (typeof msg.params === "object" && msg.params !== null ? msg.params : {}) as Record<string, unknown>;
    const sandbox = typeof params.sandbox === "string" ? params.sandbox : undefined;
    this.calls.push(msg.method);
    const delay = this.faults.take(msg.method, sandbox, ["delay"]);
    if (delay?.type === "delay") await new Promise((r) => setTimeout(r, delay.ms));
    const fail = this.faults.take(msg.method, sandbox, ["fail"]);
    if (fail?.type === "fail") {
      const headers: Record<string, string> = fail.retryAfterSeconds === undefined ? {} : { "Retry-After": String(fail.retryAfterSeconds) };
      return sendJson(res, fail.code, rpcError(id, -32603, fail.message ?? `injected fault: HTTP ${fail.code}`), headers);
    }
    try {
      const result = await this.dispatch(msg.method, params);
      sendJson(res, 200, { jsonrpc: "2.0", result, id });
    } catch (err) {
      if (err instanceof RpcError) return sendJson(res, 200, rpcError(id, err.code, err.message));
      sendJson(res, 500, rpcError(id, -32603, `Internal error: ${err instanceof Error ? err.message : String(err)}`));
    }
  }


  private async dispatch(method: string, p: Record<string, unknown>): Promise<unknown> {
    switch (method) {
      case "sandbox.start":
        return this.startSandbox(p);
      case "sandbox.stop": {
        const { namespace, name } = target(p);
        const box = this.boxes.get(key(namespace, name)) ?? (await this.starting.get(key(namespace, name))?.catch(() => undefined));
        if (!box) throw new RpcError(-32002, `Sandbox not found: ${namespace}/${name}`);
        this.boxes.delete(key(namespace, name));
        await box.sandbox.release();
        return `Sandbox ${name} stopped successfully`;
      }
      case "sandbox.metrics.get": {
        const namespace = str(p, "namespace");
        const name = p.sandbox === undefined || p.sandbox === null ? undefined : str(p, "sandbox");
        const sandboxes = [...this.boxes.values()]
          .filter((b) => (namespace === "*" || b.namespace === namespace) && (name === undefined || b.name === name))
          .map((b) => ({ namespace: b.namespace, name: b.name, running: true, cpu_usage: 0, memory_usage: 0, disk_usage: 0 }));
        return { sandboxes };
      }
      case "sandbox.command.run":
        return this.commandRun(p);
      case "sandbox.repl.run":
        throw new RpcError(-32601, "sandbox.repl.run is not implemented by this stand-in");
      default:
        throw new RpcError(-32601, `Method not found: ${method}`);
    }
  }

  private async startSandbox(p: Record<string, unknown>): Promise<string> {
    const { namespace, name } = target(p);
    const k = key(namespace, name);
    const config = (typeof p.config === "object" && p.config !== null ? p.config : {}) as Record<string, unknown>;
    // Starting a running sandbox again leaves it as it is.
    if (this.boxes.has(k)) return `Sandbox ${name} is already running`;
    const pending = this.starting.get(k);
    if (pending) {
      await pending;
      return `Sandbox ${name} is already running`;
    }
    const image = config.image === undefined ? "microsandbox/python" : str(config, "image");
    const local = this.opts.images?.[image] ?? (this.opts.defaultImage === undefined ? "host" : this.opts.defaultImage);
    if (local === null) throw new RpcError(-32603, `Failed to pull image ${image}: image not found`);
    const memoryMb = config.memory === undefined ? (this.opts.defaultMemoryMb ?? 1024) : int(config, "memory");
    const env: Record<string, string> = { PATH: DEFAULT_PATH };
    if (config.envs !== undefined) {
      if (!Array.isArray(config.envs)) throw new RpcError(-32602, "config.envs: expected an array of KEY=value strings");
      for (const e of config.envs) {
        const m = typeof e === "string" ? /^([^=]+)=(.*)$/s.exec(e) : null;
        if (!m) throw new RpcError(-32602, `config.envs: ${JSON.stringify(e)} is not KEY=value`);
        env[m[1]!] = m[2]!;
      }
    }
    const workdir = config.workdir === undefined ? "/" : str(config, "workdir");
    const starting = (async (): Promise<Box> => {
      const sandbox = await this.opts.provider.acquire(
        { image: local, limits: { memoryMb, pids: this.opts.pids ?? 256 }, network: "none", labels: {}, annotations: {}, maxLifetimeMs: NO_TIMEOUT_MS },
        {},
      );
      return { namespace, name, sandbox, env, workdir, queue: Promise.resolve() };
    })();
    this.starting.set(k, starting);
    try {
      const box = await starting.catch((err: unknown) => {
        const why = isSandqueueError(err) ? err.message : String(err);
        throw new RpcError(-32603, /image/i.test(why) ? `Failed to pull image ${image}: ${why}` : `Failed to start sandbox: ${why}`);
      });
      this.boxes.set(k, box);
      return `Sandbox ${name} started successfully`;
    } finally {
      this.starting.delete(k);
    }
  }

  private async commandRun(p: Record<string, unknown>): Promise<unknown> {
    const { namespace, name } = target(p);
    const command = str(p, "command");
    const args = p.args === undefined ? [] : p.args;
    if (!Array.isArray(args) || !args.every((a) => typeof a === "string")) throw new RpcError(-32602, "args: expected an array of strings");
    const box = this.boxes.get(key(namespace, name));
    if (!box) throw new RpcError(-32002, `Sandbox not found: ${namespace}/${name}`);
    const vanish = this.faults.take("sandbox.command.run", name, ["vanish"]) as Extract<FaultAction, { type: "vanish" }> | null;
    const run = box.queue.then(async () => {
      let timer: NodeJS.Timeout | undefined;
      if (vanish) timer = setTimeout(() => void this.vanish(namespace, name), vanish.afterMs);
      try {
        return await box.sandbox.exec({
          argv: [command, ...(args as string[])],
          env: box.env,
          cwd: box.workdir,
          // SandboxCommandRunParams has no timeout: a command runs until it ends or its sandbox stops.
          timeoutMs: NO_TIMEOUT_MS,
          maxOutputBytes: this.opts.maxOutputBytes ?? 64 * 1024 * 1024,
        });
      } finally {
        clearTimeout(timer);
      }
    });
    box.queue = run.catch(() => undefined);
    const r = await run.catch((err: unknown) => {
      throw new RpcError(-32603, `Portal request failed: ${isSandqueueError(err) ? err.message : String(err)}`);
    });
    if (!this.boxes.has(key(namespace, name))) throw new RpcError(-32603, `Portal connection lost: sandbox ${namespace}/${name} is no longer running`);
    const exit = r.exitCode ?? -1;
    return {
      command,
      args,
      exit_code: exit,
      success: exit === 0,
      output: [...lines(r.stdout, "stdout"), ...lines(r.stderr, "stderr")],
    };
  }
}

/** What the portal sends for one stream: lossy UTF-8, one entry per line, line ends dropped. */
export function lines(bytes: Buffer, stream: "stdout" | "stderr"): Array<{ stream: string; text: string }> {
  if (bytes.length === 0) return [];
  const parts = bytes.toString("utf8").split("\n");
  if (parts.at(-1) === "") parts.pop();
  return parts.map((t) => ({ stream, text: t.endsWith("\r") ? t.slice(0, -1) : t }));
}

function key(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

function target(p: Record<string, unknown>): { namespace: string; name: string } {
  return { namespace: str(p, "namespace"), name: str(p, "sandbox") };
}

function str(p: Record<string, unknown>, field: string): string {
  const v = p[field];
  if (typeof v !== "string" || v === "") throw new RpcError(-32602, `Invalid params: ${field} must be a non-empty string`);
  return v;
}

function int(p: Record<string, unknown>, field: string): number {
  const v = p[field];
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw new RpcError(-32602, `Invalid params: ${field} must be a non-negative integer`);
  return v;
}

function rpcError(id: RpcId, code: number, message: string): unknown {
  return { jsonrpc: "2.0", error: { code, message }, id };
}

