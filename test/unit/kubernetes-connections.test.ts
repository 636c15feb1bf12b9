/**
 * The kubernetes provider's exec connections (providers/kubernetes/connections.ts):
 * the next exec's TLS connection is made while one is in use, so an exec
 * only waits for its upgrade; the spare goes away when the provider closes.
 */
import https from "node:https";
import type { TLSSocket } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocketServer, type WebSocket } from "ws";
import { resumingSocketFactory } from "../../providers/kubernetes/connections.js";
import { selfSignedCertificate } from "../../standins/kubernetes/tls-cert.js";

const until = async (what: () => boolean): Promise<void> => {
  for (let i = 0; !what(); i++) {
    if (i > 200) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe("exec connections made ahead", () => {
  const { certPem, keyPem } = selfSignedCertificate("connections-test", ["127.0.0.1"], []);
  const server = https.createServer({ cert: certPem, key: keyPem });
  const wss = new WebSocketServer({ server });
  /** TLS connections as the server accepted them, in order, and which of them carried an upgrade. */
  const accepted: TLSSocket[] = [];
  const upgraded = new Set<TLSSocket>();
  let url = "";
  beforeAll(async () => {
    server.on("secureConnection", (s: TLSSocket) => accepted.push(s));
    wss.on("connection", (_ws, req) => upgraded.add(req.socket as TLSSocket));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `wss://127.0.0.1:${(server.address() as { port: number }).port}/exec`;
  });
  afterAll(async () => {
    wss.close();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const open = (factory: ReturnType<typeof resumingSocketFactory>["factory"]): Promise<WebSocket> =>
    new Promise((resolve, reject) => {
      const ws = factory(url, ["v5.channel.k8s.io"], { ca: certPem });
      ws.once("open", () => resolve(ws));
      ws.once("error", reject);
    });

  it("the second exec upgrades over the connection made during the first; close drops the next spare", async () => {
    const sockets = resumingSocketFactory();
    const first = await open(sockets.factory);
    // The spare: a second TLS connection, accepted with no request on it.
    await until(() => accepted.length === 2);
    expect(upgraded.has(accepted[1]!)).toBe(false);
    const second = await open(sockets.factory);
    expect(upgraded.has(accepted[1]!)).toBe(true);
    await until(() => accepted.length === 3);
    sockets.close();
    await until(() => accepted[2]!.destroyed);
    expect(upgraded.has(accepted[2]!)).toBe(false);
    // Connections in use are the execs' own: close leaves them open.
    expect([first.readyState, second.readyState]).toEqual([first.OPEN, second.OPEN]);
    first.close();
    second.close();
  });
});
