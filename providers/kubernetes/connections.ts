/**
 * Connection reuse for @kubernetes/client-node 1.4. It builds a new
 * https.Agent for every API call, so every call pays a TCP and TLS
 * handshake; and every exec WebSocket a full TLS handshake. Here a
 * KubeConfig gets one keep-alive agent per (server, credentials) for API
 * calls, and exec sockets one agent whose TLS session cache lets each new
 * connection resume the last session, and which connects the next exec's
 * socket ahead of need. The client's `createAgent` is
 * private: when a later version drops it, calls work as before, unpooled.
 */
import https from "node:https";
import type { Duplex } from "node:stream";
import type { KubeConfig } from "@kubernetes/client-node";
import { WebSocket } from "ws";

type AgentFactory = (cluster: { server?: string } | null, opts: https.AgentOptions) => https.Agent;

const text = (v: unknown): string => (v === undefined ? "" : Buffer.isBuffer(v) ? v.toString("base64") : String(v));

export function reuseConnections(kc: KubeConfig): void {
  const k = kc as unknown as { createAgent?: AgentFactory; sandqueuePooled?: boolean };
  if (typeof k.createAgent !== "function" || k.sandqueuePooled) return;
  const original = k.createAgent.bind(kc);
  const agents = new Map<string, https.Agent>();
  k.createAgent = (cluster, opts) => {
    // The agent carries the TLS identity: one per server, CA and client credentials.
    const id = [cluster?.server, opts.ca, opts.cert, opts.key, opts.pfx, opts.rejectUnauthorized, opts.servername].map(text).join("\u0000");
    let agent = agents.get(id);
    if (!agent) {
      agent = original(cluster, { ...opts, keepAlive: true, maxFreeSockets: 16 });
      agents.set(id, agent);
    }
    return agent;
  };
  k.sandqueuePooled = true;
}

/** A spare connection older than this is not used (servers drop connections that send no request for long). */
const SPARE_MAX_AGE_MS = 10_000;

/**
 * The exec sockets' agent: each new connection resumes the last TLS
 * session, and while one exec uses its connection the next one is already
 * being made (TCP and TLS), so an exec waits only for its upgrade request.
 * At most one spare, unref'd (it keeps no process alive), dropped when it
 * closes, ages or does not match the next request's server and credentials.
 */
class PreconnectingAgent extends https.Agent {
  private spare: { socket: Duplex; key: string; at: number } | null = null;
  private closed = false;

  // Node's https.Agent: (options, callback) from its createSocket; returns the socket synchronously.
  override createConnection(options: https.RequestOptions & { _agentKey?: string }, callback?: unknown): Duplex {
    const key = options._agentKey ?? this.getName(options);
    const socket = this.takeSpare(key) ?? (super.createConnection as (o: unknown, cb?: unknown) => Duplex).call(this, options, callback);
    if (!this.closed) setImmediate(() => this.prepare(options, key));
    return socket;
  }

  private prepare(options: https.RequestOptions, key: string): void {
    if (this.spare || this.closed) return;
    const socket = (super.createConnection as (o: unknown) => Duplex & { unref(): void }).call(this, { ...options });
    // A spare that fails is only dropped; once handed out, the request's own handlers see its errors too.
    socket.on("error", () => undefined);
    socket.once("close", () => {
      if (this.spare?.socket === socket) this.spare = null;
    });
    socket.unref();
    this.spare = { socket, key, at: Date.now() };
  }

  private takeSpare(key: string): Duplex | null {
    const s = this.spare;
    this.spare = null;
    if (!s) return null;
    if (s.key !== key || s.socket.destroyed || Date.now() - s.at > SPARE_MAX_AGE_MS) {
      s.socket.destroy();
      return null;
    }
    (s.socket as Duplex & { ref(): void }).ref();
    return s.socket;
  }

  /** Drops the spare and makes no more (connections in use are left alone: they end with their execs). */
  close(): void {
    this.closed = true;
    this.spare?.socket.destroy();
    this.spare = null;
  }
}

/** A WebSocket factory for client-node's WebSocketHandler whose TLS connections resume a session and are made ahead (PreconnectingAgent); `close` drops the spare. */
export function resumingSocketFactory(): { factory: (uri: string, protocols: string[], opts: Record<string, unknown>) => WebSocket; close: () => void } {
  const agent = new PreconnectingAgent({ keepAlive: false, maxCachedSessions: 16 });
  return {
    factory: (uri, protocols, opts) => new WebSocket(uri, protocols, { ...opts, agent }),
    close: () => agent.close(),
  };
}
