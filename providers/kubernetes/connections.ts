/**
 * Connection reuse for @kubernetes/client-node 1.4. It builds a new
 * https.Agent for every API call, so every call pays a TCP and TLS
 * handshake; and every exec WebSocket a full TLS handshake. Here a
 * KubeConfig gets one keep-alive agent per (server, credentials) for API
 * calls, and exec sockets one agent whose TLS session cache lets each new
 * connection resume the last session. The client's `createAgent` is
 * private: when a later version drops it, calls work as before, unpooled.
 */
import https from "node:https";
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

/** A WebSocket factory for client-node's WebSocketHandler whose TLS connections resume a cached session. */
export function resumingSocketFactory(): (uri: string, protocols: string[], opts: Record<string, unknown>) => WebSocket {
  const agent = new https.Agent({ keepAlive: false, maxCachedSessions: 16 });
  return (uri, protocols, opts) => new WebSocket(uri, protocols, { ...opts, agent });
}
