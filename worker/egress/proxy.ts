/**
 * The egress policy proxy: one per worker, serving every running job that
 * has a network policy, each on its own unix socket (the socket is the
 * job's identity: whatever arrives on it is that job's, under that job's
 * policy). The sandbox reaches its socket and nothing else.
 *
 * - Plain HTTP (absolute-form requests): decided on host, port, method and
 *   path, then forwarded.
 * - CONNECT: decided on host and port (policy.ts connectDecision). A blind
 *   tunnel carries the client's own TLS end to end. Hosts with a bound
 *   secret, or whose rule restricts methods or paths, are opened instead:
 *   the proxy answers the TLS with a certificate of the worker's CA, decides
 *   each request inside, adds the bound secret's header, and makes its own
 *   TLS connection upstream, verified against the system store (or
 *   SANDQUEUE_EGRESS_UPSTREAM_CA).
 * - Names are resolved here and every answer is checked (addresses.ts); the
 *   connection goes to the address that passed, never to a second lookup,
 *   so a DNS answer that changes between check and connect changes nothing.
 * - Refusals: 403 naming the rule (or the address, or the byte cap), 429
 *   with Retry-After for a rule's rate, 502 when the upstream cannot be
 *   reached. Every request is reported (onEvent) for the audit log and the
 *   metrics; bodies and tunnelled bytes count against the job's byte cap.
 */
import { chmod, rm } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import net, { isIP } from "node:net";
import tls from "node:tls";
import type { LookupFunction } from "node:net";
import { normaliseHost, type NetworkPolicy } from "../../producer/network-policy.js";
import type { EgressConfig } from "./config.js";
import { AddressPolicy } from "./addresses.js";
import type { CertificateAuthority } from "./certificate-authority.js";
import { bindingValue, bindingsFor, compilePolicy, connectDecision, decide, describeDecision, pathForMatching, type CompiledBinding, type CompiledPolicy, type CompiledRule } from "./policy.js";
import { TokenBucket } from "./rate-limit.js";
import { ResolveError, resolverFor, type NameResolver } from "./resolver.js";

/** What became of one request (the `decision` label of sandqueue_egress_requests_total). */
export const EGRESS_DECISIONS = ["allowed", "denied", "rate_limited", "address_refused", "byte_cap", "failed"] as const;
export type EgressDecision = (typeof EGRESS_DECISIONS)[number];

/** One request through the proxy, as the audit log and the metrics see it. Never a header value. */
export interface EgressEvent {
  job: string;
  /** http: plain request; https: a request inside opened TLS; tunnel: a blind CONNECT tunnel. */
  scheme: "http" | "https" | "tunnel";
  method: string;
  host: string;
  port: number;
  /** Without the query string (it may carry tokens); null for tunnels. */
  path: string | null;
  decision: EgressDecision;
  /** `network.egress[2]`, `network.default`, or null when no rule was consulted. */
  rule: string | null;
  /** The status the sandbox got (upstream's, or the proxy's own refusal); null when the connection broke. */
  status: number | null;
  /** Names of the bound secrets added to the request (never values). */
  secrets: string[];
  bytesOut: number;
  bytesIn: number;
  ms: number;
  /** Why a refusal or failure happened, in words. */
  reason?: string;
}

export interface EgressJob {
  jobId: string;
  policy: NetworkPolicy;
  /** Values of the policy's bound secrets, by name; they go to upstreams only. */
  boundSecrets: Readonly<Record<string, string>>;
  /** Where to listen: the sandbox's end of its way out (SandboxEgress). */
  socketPath: string;
}

export interface EgressProxyOptions {
  config: EgressConfig;
  ca: CertificateAuthority;
  /** Default: from the config (hosts file, DNS servers, or the system resolver). */
  resolver?: NameResolver;
  /** Default: from the config, with this host's interface addresses. */
  addresses?: AddressPolicy;
  /** PEM the upstreams of opened TLS are verified against; default the system store (config.upstreamCaFile is read by the caller). */
  upstreamCa?: string;
  onEvent?: (e: EgressEvent) => void;
}

/** Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus the proxy's own. */
const HOP_BY_HOP = new Set([
  "connection",
  // The proxy's own server answers 100-continue; upstream gets the body straight away.
  "expect",
  "proxy-connection",
  "keep-alive",
  "proxy-authorization",
  "proxy-authenticate",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly decision: EgressDecision,
    message: string,
    readonly rule: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** A CONNECT's destination, remembered for the requests inside opened TLS. */
interface OpenedTarget {
  host: string;
  port: number;
  address: string;
}

export class EgressProxy {
  private readonly sessions = new Set<JobEgress>();
  readonly resolver: NameResolver;
  readonly addresses: AddressPolicy;

  constructor(private readonly opts: EgressProxyOptions) {
    this.resolver = opts.resolver ?? resolverFor(opts.config);
    this.addresses = opts.addresses ?? new AddressPolicy({ allowPrivate: opts.config.allowPrivate, deny: opts.config.denyAddresses });
  }

  get ca(): CertificateAuthority {
    return this.opts.ca;
  }

  /** Jobs served now. */
  get activeJobs(): number {
    return this.sessions.size;
  }

  /** Starts serving a job on its socket; close the returned session when the job ends. */
  async open(job: EgressJob): Promise<JobEgress> {
    const session = new JobEgress(job, this.opts, this.resolver, this.addresses, () => this.sessions.delete(session));
    await session.listen();
    this.sessions.add(session);
    return session;
  }

  async close(): Promise<void> {
    await Promise.all([...this.sessions].map((s) => s.close()));
  }
}

/** The proxy's state for one job: its listener, policy, rate buckets, byte count and connections. */
export class JobEgress {
  readonly jobId: string;
  private readonly policy: CompiledPolicy;
  private readonly secrets: Readonly<Record<string, string>>;
  private readonly server: http.Server;
  /** Serves the requests inside opened TLS (fed TLS sockets, never listening). */
  private readonly inner: http.Server;
  private readonly targets = new WeakMap<net.Socket, OpenedTarget>();
  private readonly sockets = new Set<net.Socket>();
  private readonly buckets = new Map<number, TokenBucket>();
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  private readonly httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 32 });
  private readonly maxBytes: number;
  private bytes = 0;
  private capped = false;
  private closing: Promise<void> | null = null;

  constructor(
    private readonly job: EgressJob,
    private readonly opts: EgressProxyOptions,
    private readonly resolver: NameResolver,
    private readonly addresses: AddressPolicy,
    private readonly onClosed: () => void,
  ) {
    this.jobId = job.jobId;
    this.policy = compilePolicy(job.policy);
    this.secrets = job.boundSecrets;
    this.maxBytes = Math.min(job.policy.maxBytes ?? opts.config.maxBytes, opts.config.maxBytes);
    const serverOpts: http.ServerOptions = { requireHostHeader: false, keepAliveTimeout: 30_000 };
    this.server = http.createServer(serverOpts, (req, res) => void this.onPlainRequest(req, res));
    this.server.on("connect", (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => void this.onConnect(req, socket, head));
    this.server.on("connection", (s: net.Socket) => this.track(s));
    this.server.on("clientError", (_err, socket: net.Socket) => socket.destroy());
    this.inner = http.createServer(serverOpts, (req, res) => void this.onOpenedRequest(req, res));
    this.inner.on("clientError", (_err, socket: net.Socket) => socket.destroy());
  }

  /** Bytes counted against the cap so far (bodies and tunnelled bytes, both directions). */
  get bytesUsed(): number {
    return this.bytes;
  }

  async listen(): Promise<void> {
    await rm(this.job.socketPath, { force: true });
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(this.job.socketPath, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    // The sandbox's user may be anyone on the host (a container's uid): the directory, not the mode, guards the socket.
    await chmod(this.job.socketPath, 0o666);
  }

  /** Stops serving the job: its listener, every connection it has open, its socket file. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      this.destroyAll();
      this.inner.close();
      this.httpAgent.destroy();
      this.httpsAgent.destroy();
      await closed;
      await rm(this.job.socketPath, { force: true });
      this.onClosed();
    })();
    return this.closing;
  }

  private track(s: net.Socket): void {
    this.sockets.add(s);
    s.once("close", () => this.sockets.delete(s));
  }

  private destroyAll(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  /** Counts bytes against the cap; past it, every connection of the job is cut. */
  private count(n: number): void {
    this.bytes += n;
    if (!this.capped && this.bytes > this.maxBytes) {
      this.capped = true;
      this.destroyAll();
      this.httpAgent.destroy();
      this.httpsAgent.destroy();
    }
  }

  private capRefusal(): Refusal {
    return new Refusal(403, "byte_cap", `this job's egress reached its cap of ${this.maxBytes} bytes (network.maxBytes, SANDQUEUE_EGRESS_MAX_BYTES)`);
  }

  private emit(e: Omit<EgressEvent, "job">): void {
    this.opts.onEvent?.({ job: this.jobId, ...e });
  }

  // --- decisions ---------------------------------------------------------------

  private ruleRef(rule: CompiledRule | null): string {
    return rule ? rule.ref : "network.default";
  }

  private rateLimit(rule: CompiledRule | null): void {
    if (!rule || rule.ratePerMinute === null) return;
    let bucket = this.buckets.get(rule.index);
    if (!bucket) this.buckets.set(rule.index, (bucket = new TokenBucket(rule.ratePerMinute)));
    const taken = bucket.take();
    if (!taken.ok) {
      throw new Refusal(
        429,
        "rate_limited",
        `${rule.ref} allows ${rule.ratePerMinute} requests per minute; retry in ${taken.retryAfterSeconds} s`,
        rule.ref,
        { "retry-after": String(taken.retryAfterSeconds) },
      );
    }
  }

  /** Resolves `host` and returns the first address allowed to be dialled; refuses when none is. */
  private async checkedAddress(host: string): Promise<string> {
    let found: string[];
    try {
      found = await this.resolver.resolve(host);
    } catch (err) {
      if (err instanceof ResolveError) throw new Refusal(502, "failed", `cannot resolve ${host}: ${err.message}`);
      throw err;
    }
    const problems: string[] = [];
    for (const address of found) {
      const problem = this.addresses.problem(address);
      if (problem === null) return address;
      problems.push(problem);
    }
    const hint = this.opts.config.allowPrivate ? "" : " (an operator may allow such addresses with SANDQUEUE_EGRESS_ALLOW_PRIVATE=true)";
    throw new Refusal(403, "address_refused", `${host} resolves to no address the proxy may connect to: ${problems.join("; ")}${hint}`);
  }

  // --- plain HTTP and requests inside opened TLS --------------------------------

  private async onPlainRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const target = /^http:\/\/([^/?#]*)(.*)$/is.exec(req.url ?? "");
    if (!target) {
      const https = /^https:/i.test(req.url ?? "");
      return this.refuse(res, new Refusal(400, "denied", https ? "https:// URLs go through CONNECT (set HTTPS_PROXY)" : "this is an egress proxy: send absolute http:// URLs (set HTTP_PROXY)"), {
        scheme: "http",
        method: req.method ?? "?",
        host: "",
        port: 0,
        path: null,
      });
    }
    const authority = parseAuthority(target[1]!, 80);
    const rawPath = target[2] || "/";
    if (!authority) {
      return this.refuse(res, new Refusal(400, "denied", `not a valid host in ${JSON.stringify(target[1])}`), { scheme: "http", method: req.method ?? "?", host: "", port: 0, path: null });
    }
    await this.forward(req, res, { scheme: "http", host: authority.host, port: authority.port, rawPath, address: null });
  }

  private async onOpenedRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const target = this.targets.get(req.socket);
    if (!target) return void res.destroy();
    // Origin-form inside TLS; an absolute form names the same host anyway (the CONNECT decided it).
    const url = req.url ?? "/";
    const rawPath = url.startsWith("/") ? url : (/^https?:\/\/[^/?#]*(.*)$/is.exec(url)?.[1] ?? "") || "/";
    await this.forward(req, res, { scheme: "https", host: target.host, port: target.port, rawPath, address: target.address });
  }

  private async forward(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    t: { scheme: "http" | "https"; host: string; port: number; rawPath: string; address: string | null },
  ): Promise<void> {
    const started = performance.now();
    const method = (req.method ?? "GET").toUpperCase();
    const q = t.rawPath.search(/[?#]/);
    const shownPath = q === -1 ? t.rawPath : t.rawPath.slice(0, q);
    const base = { scheme: t.scheme, method, host: t.host, port: t.port, path: shownPath };
    let rule: string | null = null;
    let bindings: CompiledBinding[] = [];
    let address: string;
    try {
      if (this.capped) throw this.capRefusal();
      const path = pathForMatching(t.rawPath);
      if (path === null) {
        throw new Refusal(400, "denied", `path ${JSON.stringify(shownPath.slice(0, 200))} is refused: dot segments, encoded slashes, empty segments and backslashes could be read differently upstream`);
      }
      const d = decide(this.policy, { host: t.host, port: t.port, method, path });
      rule = this.ruleRef(d.rule);
      if (d.action === "deny") {
        throw new Refusal(403, "denied", `${method} ${t.scheme}://${hostForUrl(t.host)}:${t.port}${shownPath} denied by ${describeDecision(d, this.policy)}`, rule);
      }
      this.rateLimit(d.rule);
      bindings = bindingsFor(this.policy, t.host);
      if (bindings.length && t.scheme === "http") {
        throw new Refusal(403, "denied", `${t.host} has a bound secret (${bindings.map((b) => b.name).join(", ")}), which is sent over HTTPS only: use https://`, rule);
      }
      address = t.address ?? (await this.checkedAddress(t.host));
    } catch (err) {
      req.resume();
      if (err instanceof Refusal) return this.refuse(res, err, { ...base, path: shownPath }, started, rule);
      throw err;
    }

    let bytesOut = 0;
    let bytesIn = 0;
    let done = false;
    const finish = (decision: EgressDecision, status: number | null, reason?: string): void => {
      if (done) return;
      done = true;
      this.emit({ ...base, decision, rule, status, secrets: bindings.map((b) => b.name), bytesOut, bytesIn, ms: performance.now() - started, ...(reason ? { reason } : {}) });
    };
    const headers = forwardHeaders(req.rawHeaders, hostHeader(t.host, t.port, t.scheme === "https" ? 443 : 80), bindings, this.secrets);
    const options: https.RequestOptions = {
      host: address,
      port: t.port,
      method,
      path: t.rawPath,
      headers,
      setHost: false,
      lookup: onlyThis(address),
    };
    const upstream =
      t.scheme === "https"
        ? https.request({
            ...options,
            agent: this.httpsAgent,
            servername: isIP(t.host) ? undefined : t.host,
            ...(this.opts.upstreamCa ? { ca: this.opts.upstreamCa } : {}),
          })
        : http.request({ ...options, agent: this.httpAgent });
    upstream.once("socket", (s: net.Socket) => {
      // Only connecting is timed: a slow answer is bounded by the job's wall time (its session closes with it).
      if (!s.connecting) return;
      const ms = this.opts.config.connectTimeoutMs;
      const timer = setTimeout(() => upstream.destroy(new Error(`no connection within ${ms} ms`)), ms);
      s.once("connect", () => clearTimeout(timer));
      s.once("close", () => clearTimeout(timer));
    });
    upstream.on("error", (err: NodeJS.ErrnoException) => {
      if (this.capped) {
        res.destroy();
        return finish("byte_cap", null, "byte cap reached");
      }
      const why = `${t.scheme === "https" && /certificate|self.signed|unable to verify/i.test(err.message) ? "upstream certificate not trusted" : "upstream unreachable"}: ${err.code ?? err.message}`;
      if (!res.headersSent) {
        this.writeRefusal(res, new Refusal(502, "failed", `${t.host} (${address}:${t.port}): ${why}`, rule));
        finish("failed", 502, why);
      } else {
        res.destroy();
        finish("failed", null, why);
      }
    });
    upstream.on("response", (up) => {
      res.writeHead(up.statusCode ?? 502, up.statusMessage, responseHeaders(up.rawHeaders));
      up.on("data", (chunk: Buffer) => {
        bytesIn += chunk.length;
        this.count(chunk.length);
      });
      up.pipe(res);
      up.on("end", () => finish("allowed", up.statusCode ?? null));
      up.on("error", () => res.destroy());
      res.on("close", () => {
        if (!done) {
          up.destroy();
          finish(this.capped ? "byte_cap" : "allowed", up.statusCode ?? null, this.capped ? "byte cap reached" : "connection closed before the end of the response");
        }
      });
    });
    req.on("data", (chunk: Buffer) => {
      bytesOut += chunk.length;
      this.count(chunk.length);
    });
    req.pipe(upstream);
    req.on("error", () => upstream.destroy());
  }

  private refuse(res: http.ServerResponse, r: Refusal, base: Omit<EgressEvent, "job" | "decision" | "rule" | "status" | "secrets" | "bytesOut" | "bytesIn" | "ms">, started = performance.now(), rule: string | null = null): void {
    this.writeRefusal(res, r);
    this.emit({ ...base, decision: r.decision, rule: r.rule ?? rule, status: r.status, secrets: [], bytesOut: 0, bytesIn: 0, ms: performance.now() - started, reason: r.message });
  }

  private writeRefusal(res: http.ServerResponse, r: Refusal): void {
    const body = `sandqueue egress proxy: ${r.message}\n`;
    res.writeHead(r.status, {
      "content-type": "text/plain; charset=utf-8",
      "content-length": Buffer.byteLength(body),
      "x-sandqueue-egress": r.decision,
      ...(r.rule ? { "x-sandqueue-egress-rule": r.rule } : {}),
      ...r.headers,
    });
    res.end(body);
  }

  // --- CONNECT -----------------------------------------------------------------

  private async onConnect(req: http.IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
    const started = performance.now();
    socket.on("error", () => undefined);
    const authority = parseAuthority(req.url ?? "", 443);
    const base = { scheme: "tunnel" as const, method: "CONNECT", host: authority?.host ?? "", port: authority?.port ?? 0, path: null };
    let rule: string | null = null;
    try {
      if (!authority) throw new Refusal(400, "denied", `CONNECT needs host:port (got ${JSON.stringify((req.url ?? "").slice(0, 200))})`);
      if (this.capped) throw this.capRefusal();
      const { host, port } = authority;
      const d = connectDecision(this.policy, host, port);
      if (d.kind === "deny") {
        rule = this.ruleRef(d.rule);
        throw new Refusal(403, "denied", `CONNECT ${hostForUrl(host)}:${port} denied by ${describeDecision(d, this.policy)}`, rule);
      }
      const open = d.kind === "inspect" || bindingsFor(this.policy, host).length > 0;
      if (!open && d.kind === "tunnel") {
        rule = this.ruleRef(d.rule);
        this.rateLimit(d.rule);
      }
      const address = await this.checkedAddress(host);
      if (socket.destroyed) return;
      if (open) return this.openTls(socket, head, { host, port, address });
      await this.tunnel(socket, head, { host, port, address }, base, rule, started);
    } catch (err) {
      if (!(err instanceof Refusal)) {
        socket.destroy();
        throw err;
      }
      const body = `sandqueue egress proxy: ${err.message}\n`;
      const extra = Object.entries({ ...err.headers, ...(err.rule ? { "x-sandqueue-egress-rule": err.rule } : {}) })
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join("");
      socket.end(
        `HTTP/1.1 ${err.status} ${http.STATUS_CODES[err.status] ?? ""}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-sandqueue-egress: ${err.decision}\r\n${extra}connection: close\r\n\r\n${body}`,
      );
      this.emit({ ...base, decision: err.decision, rule: err.rule ?? rule, status: err.status, secrets: [], bytesOut: 0, bytesIn: 0, ms: performance.now() - started, reason: err.message });
    }
  }

  /** Answers the client's TLS with the worker CA's certificate for `host`; the requests inside go to `inner`. */
  private openTls(socket: net.Socket, head: Buffer, target: OpenedTarget): void {
    socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length) socket.unshift(head);
    const secure = new tls.TLSSocket(socket, { isServer: true, secureContext: this.opts.ca.contextFor(target.host), ALPNProtocols: ["http/1.1"] });
    secure.on("error", () => socket.destroy());
    this.targets.set(secure, target);
    this.track(secure);
    this.inner.emit("connection", secure);
  }

  private async tunnel(
    socket: net.Socket,
    head: Buffer,
    target: OpenedTarget,
    base: Omit<EgressEvent, "job" | "decision" | "rule" | "status" | "secrets" | "bytesOut" | "bytesIn" | "ms">,
    rule: string | null,
    started: number,
  ): Promise<void> {
    const upstream = net.connect({ host: target.address, port: target.port });
    this.track(upstream);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => upstream.destroy(new Error(`no connection within ${this.opts.config.connectTimeoutMs} ms`)), this.opts.config.connectTimeoutMs);
      upstream.once("connect", () => {
        clearTimeout(timer);
        resolve();
      });
      upstream.once("error", (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new Refusal(502, "failed", `${target.host} (${target.address}:${target.port}): upstream unreachable: ${err.code ?? err.message}`, rule));
      });
    });
    let bytesOut = head.length;
    let bytesIn = 0;
    this.count(head.length);
    upstream.on("error", () => socket.destroy());
    socket.on("close", () => upstream.destroy());
    upstream.on("close", () => {
      socket.destroy();
      this.emit({ ...base, decision: this.capped ? "byte_cap" : "allowed", rule, status: 200, secrets: [], bytesOut, bytesIn, ms: performance.now() - started });
    });
    socket.on("data", (chunk: Buffer) => {
      bytesOut += chunk.length;
      this.count(chunk.length);
    });
    upstream.on("data", (chunk: Buffer) => {
      bytesIn += chunk.length;
      this.count(chunk.length);
    });
    socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length) upstream.write(head);
    socket.pipe(upstream);
    upstream.pipe(socket);
  }
}

/** `host:port` or `[v6]:port` (or a bare host with the scheme's port), normalised; null when it is no host. */
export function parseAuthority(authority: string, defaultPort: number): { host: string; port: number } | null {
  if (authority.includes("@") || /[\s/\\?#]/.test(authority)) return null;
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d{1,5}))?$/.exec(authority);
  if (!m) return null;
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (!(port >= 1 && port <= 65535)) return null;
  const host = normaliseHost(m[1]!);
  return host === null ? null : { host, port };
}

function hostForUrl(host: string): string {
  return isIP(host) === 6 ? `[${host}]` : host;
}

function hostHeader(host: string, port: number, defaultPort: number): string {
  return port === defaultPort ? hostForUrl(host) : `${hostForUrl(host)}:${port}`;
}

/** The request's headers for the upstream: hop-by-hop ones dropped, Host set to the decided host, bound secrets put in (replacing the sandbox's own). */
function forwardHeaders(raw: readonly string[], host: string, bindings: readonly CompiledBinding[], secrets: Readonly<Record<string, string>>): string[] {
  const listed = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === "connection") for (const h of raw[i + 1]!.split(",")) listed.add(h.trim().toLowerCase());
  }
  const bound = new Set(bindings.map((b) => b.header));
  const out = ["Host", host];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (name === "host" || HOP_BY_HOP.has(name) || listed.has(name) || bound.has(name)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  for (const b of bindings) {
    const value = secrets[b.name];
    if (value !== undefined) out.push(b.header, bindingValue(b, value));
  }
  return out;
}

function responseHeaders(raw: readonly string[]): string[] {
  const listed = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === "connection") for (const h of raw[i + 1]!.split(",")) listed.add(h.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(name) || listed.has(name)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/** A lookup that only ever answers the checked address: the connection cannot go anywhere else. */
function onlyThis(address: string): LookupFunction {
  const family = isIP(address);
  return ((_host: string, opts: { all?: boolean }, cb: (...args: unknown[]) => void) => {
    if (opts?.all) cb(null, [{ address, family }]);
    else cb(null, address, family);
  }) as LookupFunction;
}
