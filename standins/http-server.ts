/**
 * The HTTP plumbing the stand-ins share: listening on loopback, closing
 * with every connection dropped, JSON answers, and request bodies read with
 * a cap. What a refusal looks like on the wire (status, error body) is each
 * service's own, so the readers here return null and the caller answers.
 */
import type http from "node:http";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { timingSafeEqual } from "node:crypto";

/** Listens on host:port (0: a free port); rejects when it cannot (the port is taken). */
export function listen(server: http.Server, port: number, host = "127.0.0.1"): Promise<void> {
  return new Promise<void>((resolve, reject) => server.once("error", reject).listen(port, host, () => resolve()));
}

/**
 * Starts a service's planes (one server each, e.g. control and data):
 * every request handed to `serve` with its plane's name, each listening on
 * `host` at its port (0 or none: a free one).
 */
export async function listenPlanes<P extends string>(
  host: string,
  planes: { plane: P; server: http.Server; port: number | undefined }[],
  serve: (plane: P, req: IncomingMessage, res: ServerResponse) => void,
): Promise<void> {
  for (const p of planes) p.server.on("request", (req: IncomingMessage, res: ServerResponse) => serve(p.plane, req, res));
  for (const p of planes) await listen(p.server, p.port ?? 0, host);
}

/** Where a listening server is reached, as clients on this host dial it. */
export function loopbackUrl(server: http.Server): string {
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Stops the servers: every open connection dropped (streams and keep-alive ones too), then closed. */
export async function closeServers(...servers: http.Server[]): Promise<void> {
  for (const server of servers) server.closeAllConnections();
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
}

/** Closes a server whose connections the caller tracks (upgraded ones too), destroying them all. */
export function closeWithSockets(server: http.Server, sockets: Set<Socket>): Promise<void> {
  return new Promise<void>((resolve) => {
    server.close(() => resolve());
    for (const s of sockets) s.destroy();
  });
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** The whole request body, or null once it passes `maxBytes` (the caller answers 413 its service's way). */
export async function readBody(req: IncomingMessage): Promise<Buffer>;
export async function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer | null>;
export async function readBody(req: IncomingMessage, maxBytes = Infinity): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > maxBytes) return null;
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

/** A body as a JSON object ({} when empty), or null when it is not one. */
export function jsonObject(raw: Buffer): Record<string, unknown> | null {
  if (raw.length === 0) return {};
  try {
    const v = JSON.parse(raw.toString("utf8")) as unknown;
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** A header's secret (API key, token) against the expected one, in constant time; a missing or repeated header is no match. */
export function sameSecret(given: string | string[] | undefined, expected: string): boolean {
  if (typeof given !== "string") return false;
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}
