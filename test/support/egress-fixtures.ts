/**
 * Real upstreams for the egress tests, loopback only: an HTTP server and a
 * TLS server (certificate from a test CA made here with Debian's openssl),
 * a UDP DNS server whose answers the test scripts, and clients that talk to
 * a job's proxy socket the way proxy-aware clients do.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import dgram from "node:dgram";
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import tls from "node:tls";
import { requireCommand } from "./harness.js";

export interface TestCa {
  dir: string;
  caPem: string;
  /** Key and certificate of a leaf for `names`, signed by the test CA. */
  leaf: { key: string; cert: string };
}

/** A throwaway CA and one server certificate for `names` (DNS SANs), made with openssl. */
export function makeTestCa(dir: string, names: string[]): TestCa {
  requireCommand("openssl", "openssl");
  const run = (args: string[]): void => void execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
    "-subj", "/CN=sandqueue egress test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  run(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", `/CN=${names[0]}`]);
  writeFileSync(join(dir, "leaf.ext"), `subjectAltName=${names.map((n) => `DNS:${n}`).join(",")}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
  run(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext"]);
  const read = (f: string): string => readFileSync(join(dir, f), "utf8");
  return { dir, caPem: read("ca.pem"), leaf: { key: read("leaf.key"), cert: read("leaf.pem") } };
}

/** Deterministic bytes for /bytes/N: the same N always gives the same content. */
export function testBytes(n: number): Buffer {
  const out = Buffer.alloc(n);
  let block = createHash("sha256").update("sandqueue egress").digest();
  for (let i = 0; i < n; i += block.length) {
    block.copy(out, i, 0, Math.min(block.length, n - i));
    block = createHash("sha256").update(block).digest();
  }
  return out;
}

export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  bodyBytes: number;
  /** The address the request arrived on (which upstream was dialled). */
  localAddress: string;
}

export interface Upstream {
  port: number;
  url: string;
  seen: SeenRequest[];
  close(): Promise<void>;
}

/**
 * Routes: /bytes/N answers N deterministic bytes; anything else answers
 * JSON describing the request (method, url, headers, body length).
 */
function handler(seen: SeenRequest[]): http.RequestListener {
  return (req, res) => {
    let bodyBytes = 0;
    req.on("data", (c: Buffer) => (bodyBytes += c.length));
    req.on("end", () => {
      const entry = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, bodyBytes, localAddress: req.socket.localAddress ?? "" };
      seen.push(entry);
      const m = /^\/bytes\/(\d+)$/.exec(req.url ?? "");
      if (m) {
        const body = testBytes(Number(m[1]));
        res.writeHead(200, { "content-type": "application/octet-stream", "content-length": body.length });
        res.end(body);
        return;
      }
      const body = JSON.stringify(entry);
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
    });
  };
}

async function listen(server: http.Server, host: string, port: number, scheme: string): Promise<Upstream & { server: http.Server }> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const actual = (server.address() as AddressInfo).port;
  const seen: SeenRequest[] = (server as unknown as { seen: SeenRequest[] }).seen;
  return {
    server,
    port: actual,
    url: `${scheme}://${host}:${actual}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export async function startHttpUpstream(host = "127.0.0.1", port = 0): Promise<Upstream> {
  const seen: SeenRequest[] = [];
  const server = http.createServer(handler(seen));
  Object.assign(server, { seen });
  return listen(server, host, port, "http");
}

export async function startTlsUpstream(ca: TestCa, host = "127.0.0.1", port = 0): Promise<Upstream> {
  const seen: SeenRequest[] = [];
  const server = https.createServer({ key: ca.leaf.key, cert: ca.leaf.cert }, handler(seen));
  Object.assign(server, { seen });
  return listen(server, host, port, "https");
}

export interface DnsServer {
  /** `ip:port` for SANDQUEUE_EGRESS_DNS_SERVERS. */
  address: string;
  /** A queries received, by name. */
  queries: string[];
  close(): Promise<void>;
}

/**
 * A UDP DNS server on 127.0.0.1 answering A queries with `answer(name, n)`
 * (n: how many A queries for that name came before), TTL 0 so nothing is
 * cached; AAAA and others get an empty answer.
 */
export async function startDnsServer(answer: (name: string, n: number) => string | null): Promise<DnsServer> {
  const sock = dgram.createSocket("udp4");
  const queries: string[] = [];
  sock.on("message", (msg, rinfo) => {
    let off = 12;
    const labels: string[] = [];
    while (msg[off]! !== 0) {
      const len = msg[off]!;
      labels.push(msg.subarray(off + 1, off + 1 + len).toString("ascii"));
      off += len + 1;
    }
    const qtype = msg.readUInt16BE(off + 1);
    const question = msg.subarray(12, off + 5);
    const name = labels.join(".").toLowerCase();
    let ip: string | null = null;
    if (qtype === 1) {
      ip = answer(name, queries.filter((q) => q === name).length);
      queries.push(name);
    }
    const header = Buffer.alloc(12);
    msg.copy(header, 0, 0, 2);
    header.writeUInt16BE(0x8180, 2);
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(ip ? 1 : 0, 6);
    const rr = ip ? Buffer.concat([Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]), Buffer.from(ip.split(".").map(Number))]) : Buffer.alloc(0);
    sock.send(Buffer.concat([header, question, rr]), rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => sock.bind(0, "127.0.0.1", resolve));
  return { address: `127.0.0.1:${sock.address().port}`, queries, close: () => new Promise<void>((r) => sock.close(() => r())) };
}

export interface ProxiedResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** A plain-HTTP request through a job's proxy socket, as a proxy-aware client sends it (absolute URL). */
export function viaProxy(socketPath: string, url: string, opts: { method?: string; headers?: Record<string, string>; body?: Buffer | string } = {}): Promise<ProxiedResponse> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = http.request({ socketPath, path: url, method: opts.method ?? "GET", headers: { host: u.host, ...opts.headers }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(opts.body);
  });
}

/** CONNECT through the proxy socket: the tunnel's socket, or the proxy's refusal. */
export function connectVia(socketPath: string, authority: string): Promise<{ status: number; socket: import("node:net").Socket | null; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method: "CONNECT", path: authority, headers: { host: authority }, agent: false });
    req.on("connect", (res, socket, head: Buffer) => {
      if (res.statusCode === 200) return resolve({ status: 200, socket, body: "", headers: res.headers });
      // A refusal's body: what arrived with the head, then the rest.
      const chunks: Buffer[] = [head];
      socket.on("data", (c: Buffer) => chunks.push(c));
      socket.on("close", () => resolve({ status: res.statusCode ?? 0, socket: null, body: Buffer.concat(chunks).toString(), headers: res.headers }));
    });
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, socket: null, body: Buffer.concat(chunks).toString(), headers: res.headers }));
    });
    req.on("error", reject);
    req.end();
  });
}

/** An HTTPS request through a CONNECT tunnel, verifying the server against `ca`; also says who issued the certificate it saw. */
export async function httpsVia(
  socketPath: string,
  host: string,
  port: number,
  path: string,
  ca: string,
  opts: { method?: string; headers?: Record<string, string> } = {},
): Promise<ProxiedResponse & { issuer: string }> {
  const tunnel = await connectVia(socketPath, `${host}:${port}`);
  if (!tunnel.socket) return { status: tunnel.status, headers: tunnel.headers, body: Buffer.from(tunnel.body), issuer: "" };
  const secure = tls.connect({ socket: tunnel.socket, servername: host, ca });
  await new Promise<void>((resolve, reject) => {
    secure.once("secureConnect", () => resolve());
    secure.once("error", reject);
  });
  const issuer = String(secure.getPeerCertificate().issuer?.CN ?? "");
  return new Promise((resolve, reject) => {
    // Plain HTTP over the TLS socket made above (createConnection is used only without an agent).
    const req = http.request({ host, port, path, method: opts.method ?? "GET", headers: { host: `${host}:${port}`, ...opts.headers }, createConnection: () => secure }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        secure.destroy();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), issuer });
      });
    });
    req.on("error", reject);
    req.end();
  });
}
