/**
 * The egress proxy on its own, with real upstreams on 127.0.0.1 (plain HTTP
 * and TLS from a test CA), names from a hosts file or a scripted DNS server,
 * and clients speaking to a job's unix socket as proxy-aware clients do.
 * (The same proxy behind real sandboxes: egress-local.test.ts.)
 */
import { createHash } from "node:crypto";
import { rmSync, writeFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseJobSpec } from "../../producer/job-spec.js";
import type { NetworkPolicy } from "../../producer/network-policy.js";
import { AddressPolicy } from "../../worker/egress/addresses.js";
import { CertificateAuthority } from "../../worker/egress/certificate-authority.js";
import { DEFAULT_EGRESS_CONFIG, type EgressConfig } from "../../worker/egress/config.js";
import { EgressProxy, type EgressEvent, type JobEgress } from "../../worker/egress/proxy.js";
import { connectVia, httpsVia, makeTestCa, startDnsServer, startHttpUpstream, startTlsUpstream, testBytes, viaProxy, type TestCa, type Upstream } from "../support/egress-fixtures.js";
import { tempDir } from "../support/harness.js";

function policy(network: unknown): NetworkPolicy {
  const spec = parseJobSpec({ kind: "shell", script: "true", network });
  if (spec.network === "none") throw new Error("expected a policy");
  return spec.network;
}

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

describe("egress proxy", () => {
  const dir = tempDir("egress-proxy");
  const hostsFile = join(dir, "hosts");
  let testCa: TestCa;
  let plain: Upstream;
  let secure: Upstream;
  const workerCa = new CertificateAuthority();
  const events: EgressEvent[] = [];
  const proxies: EgressProxy[] = [];
  let n = 0;

  function proxy(over: Partial<EgressConfig> = {}, extra: { addresses?: AddressPolicy } = {}): EgressProxy {
    const p = new EgressProxy({
      config: { ...DEFAULT_EGRESS_CONFIG, hostsFile, allowPrivate: true, ...over },
      ca: workerCa,
      upstreamCa: testCa.caPem,
      onEvent: (e) => events.push(e),
      ...extra,
    });
    proxies.push(p);
    return p;
  }

  async function open(p: EgressProxy, network: unknown, boundSecrets: Record<string, string> = {}): Promise<{ session: JobEgress; socket: string; job: string }> {
    const job = `job-${++n}`;
    const socket = join(dir, `${job}.sock`);
    const session = await p.open({ jobId: job, policy: policy(network), boundSecrets, socketPath: socket });
    return { session, socket, job };
  }

  beforeAll(async () => {
    testCa = makeTestCa(dir, ["tls.test", "secret.test", "api.test"]);
    plain = await startHttpUpstream();
    secure = await startTlsUpstream(testCa);
    writeFileSync(
      hostsFile,
      [
        "127.0.0.1 plain.test api.test tls.test secret.test private.test",
        "169.254.169.254 metadata.test",
        `${ownAddress() ?? "127.0.0.1"} self.test`,
        "",
      ].join("\n"),
    );
  });

  afterAll(async () => {
    await Promise.all(proxies.map((p) => p.close()));
    await plain?.close();
    await secure?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("forwards an allowed GET byte for byte, and reports it", async () => {
    const { socket, job, session } = await open(proxy(), { egress: ["plain.test"] });
    const res = await viaProxy(socket, `http://plain.test:${plain.port}/bytes/1048576`);
    expect(res.status).toBe(200);
    expect(sha(res.body)).toBe(sha(testBytes(1_048_576)));
    // The upstream saw the name the job asked for as Host, and no proxy headers.
    const echo = JSON.parse((await viaProxy(socket, `http://plain.test:${plain.port}/echo?q=1`, { headers: { "proxy-connection": "keep-alive", "x-job": "1" } })).body.toString());
    expect(echo).toMatchObject({ method: "GET", url: "/echo?q=1", headers: { host: `plain.test:${plain.port}`, "x-job": "1" } });
    expect(echo.headers["proxy-connection"]).toBeUndefined();
    const mine = events.filter((e) => e.job === job);
    expect(mine[0]).toMatchObject({ scheme: "http", method: "GET", host: "plain.test", port: plain.port, path: "/bytes/1048576", decision: "allowed", rule: "network.egress[0]", status: 200, bytesIn: 1_048_576 });
    expect(mine[1]!.path).toBe("/echo"); // never the query string
    expect(session.bytesUsed).toBeGreaterThanOrEqual(1_048_576);
    await session.close();
  });

  it("refuses a denied host, method and path with 403 naming the rule that decided", async () => {
    const { socket } = await open(proxy(), {
      default: "deny",
      egress: [{ host: "api.test", methods: ["GET"], paths: ["/v1/*"] }, { host: "*.internal.test", action: "deny" }, "plain.test"],
    });
    const url = (host: string, path: string) => `http://${host}:${plain.port}${path}`;
    expect((await viaProxy(socket, url("api.test", "/v1/items"))).status).toBe(200);

    const host = await viaProxy(socket, url("db.internal.test", "/"));
    expect(host.status).toBe(403);
    expect(host.headers["x-sandqueue-egress-rule"]).toBe("network.egress[1]");
    expect(host.body.toString()).toContain('denied by network.egress[1] {"host":"*.internal.test","action":"deny"}');

    const method = await viaProxy(socket, url("api.test", "/v1/items"), { method: "POST", body: "x" });
    expect(method.status).toBe(403);
    expect(method.body.toString()).toContain(`POST http://api.test:${plain.port}/v1/items denied by network.default "deny" (no rule of network.egress matches)`);

    const path = await viaProxy(socket, url("api.test", "/v2/items"));
    expect(path.status).toBe(403);
    expect(path.headers["x-sandqueue-egress-rule"]).toBe("network.default");

    // A path the upstream could read as /admin is refused, not matched as /v1/...
    const sneaky = await viaProxy(socket, url("api.test", "/v1/%2e%2e/admin"));
    expect(sneaky.status).toBe(400);
    const other = await viaProxy(socket, url("elsewhere.test", "/"));
    expect(other.status).toBe(403);
    expect(plain.seen.some((r) => r.url.includes("admin") || r.url === "/v2/items")).toBe(false);
  });

  it("answers 429 with Retry-After past a rule's ratePerMinute (130 requests against 120/min)", async () => {
    const { socket } = await open(proxy(), { egress: [{ host: "api.test", ratePerMinute: 120 }] });
    const statuses: number[] = [];
    let retryAfter: string | undefined;
    for (let i = 0; i < 130; i++) {
      const r = await viaProxy(socket, `http://api.test:${plain.port}/r${i}`);
      statuses.push(r.status);
      if (r.status === 429) {
        retryAfter = r.headers["retry-after"] as string;
        expect(r.body.toString()).toContain("network.egress[0] allows 120 requests per minute");
      }
    }
    const ok = statuses.filter((s) => s === 200).length;
    const limited = statuses.filter((s) => s === 429).length;
    expect(ok + limited).toBe(130);
    // 120 at once, plus what refilled (2 a second) while the loop ran.
    expect(limited).toBeGreaterThanOrEqual(1);
    expect(ok).toBeGreaterThanOrEqual(120);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  });

  it("refuses loopback, link-local (metadata) and the worker's own addresses unless the operator allows them", async () => {
    const strict = proxy({ allowPrivate: false });
    const { socket } = await open(strict, { egress: ["private.test", "metadata.test", "self.test", "127.0.0.1"] });
    const loop = await viaProxy(socket, `http://private.test:${plain.port}/`);
    expect(loop.status).toBe(403);
    expect(loop.headers["x-sandqueue-egress"]).toBe("address_refused");
    expect(loop.body.toString()).toContain("127.0.0.1 is a loopback address");
    expect(loop.body.toString()).toContain("SANDQUEUE_EGRESS_ALLOW_PRIVATE=true");
    expect((await viaProxy(socket, `http://metadata.test/latest/meta-data/`)).body.toString()).toContain("169.254.169.254 is a link-local address");
    const self = ownAddress();
    if (self) expect((await viaProxy(socket, `http://self.test:${plain.port}/`)).body.toString()).toContain("an address of the worker itself");
    // An IP literal allowed by a rule is checked too; so is CONNECT.
    expect((await viaProxy(socket, `http://127.0.0.1:${plain.port}/`)).status).toBe(403);
    expect((await connectVia(socket, `private.test:${secure.port}`)).status).toBe(403);
    const before = plain.seen.length;
    // The same policy on a worker that allows private addresses reaches the upstream.
    const { socket: open2 } = await open(proxy({ allowPrivate: true }), { egress: ["private.test"] });
    expect((await viaProxy(open2, `http://private.test:${plain.port}/ok`)).status).toBe(200);
    expect(plain.seen.length).toBe(before + 1);
    // Deny ranges apply even when private addresses are allowed.
    const { socket: denied } = await open(proxy({ allowPrivate: true, denyAddresses: ["127.0.0.0/8"] }), { egress: ["private.test"] });
    expect((await viaProxy(denied, `http://private.test:${plain.port}/`)).body.toString()).toContain("in SANDQUEUE_EGRESS_DENY_ADDRESSES");
  });

  it("connects to the address it checked: a DNS answer that changes between check and connect reaches nothing", async () => {
    // Same port on 127.0.0.2 (the first answer) and 127.0.0.3 (every later one, refused by the operator).
    const first = await startHttpUpstream("127.0.0.2");
    const second = await startHttpUpstream("127.0.0.3", first.port);
    const dns = await startDnsServer((name, k) => (name === "rebind.test" ? (k === 0 ? "127.0.0.2" : "127.0.0.3") : null));
    try {
      const p = proxy({ hostsFile: undefined, dnsServers: [dns.address], allowPrivate: true, denyAddresses: ["127.0.0.3"] });
      const { socket } = await open(p, { egress: ["rebind.test"] });
      const ok = await viaProxy(socket, `http://rebind.test:${first.port}/one`);
      expect(ok.status).toBe(200);
      // One lookup per request: had the proxy resolved again to connect, it would have reached 127.0.0.3.
      expect(dns.queries).toEqual(["rebind.test"]);
      expect(first.seen.map((r) => r.localAddress)).toEqual(["127.0.0.2"]);
      const again = await viaProxy(socket, `http://rebind.test:${first.port}/two`);
      expect(again.status).toBe(403);
      expect(again.body.toString()).toContain("127.0.0.3 is in SANDQUEUE_EGRESS_DENY_ADDRESSES");
      expect((await connectVia(socket, `rebind.test:${first.port}`)).status).toBe(403);
      expect(second.seen).toEqual([]);
    } finally {
      await Promise.all([first.close(), second.close(), dns.close()]);
    }
  });

  it("tunnels CONNECT to an allowed host: the client's TLS reaches the upstream end to end", async () => {
    const { socket, job } = await open(proxy(), { egress: ["tls.test"] });
    const res = await httpsVia(socket, "tls.test", secure.port, "/bytes/65536", testCa.caPem);
    expect(res.status).toBe(200);
    expect(sha(res.body)).toBe(sha(testBytes(65536)));
    // The upstream's own certificate: nothing in between terminated the TLS.
    expect(res.issuer).toBe("sandqueue egress test CA");
    const denied = await connectVia(socket, `secret.test:${secure.port}`);
    expect(denied.status).toBe(403);
    expect(denied.body).toContain(`CONNECT secret.test:${secure.port} denied by network.default "deny"`);
    await new Promise((r) => setTimeout(r, 50));
    const tunnel = events.find((e) => e.job === job && e.scheme === "tunnel" && e.decision === "allowed");
    expect(tunnel).toMatchObject({ host: "tls.test", method: "CONNECT", rule: "network.egress[0]" });
    expect(tunnel!.bytesIn).toBeGreaterThan(65536);
  });

  it("opens the TLS of a host with a bound secret: the upstream gets the header, the client never sends it", async () => {
    const { socket, job } = await open(
      proxy(),
      { egress: ["secret.test", "plain.test"], secrets: [{ name: "API_TOKEN", hosts: ["secret.test", "plain.test"], header: "Authorization", format: "Bearer {}" }] },
      { API_TOKEN: "tok-0123456789" },
    );
    // The sandbox trusts the worker's CA (its bundle), not the upstream's.
    const res = await httpsVia(socket, "secret.test", secure.port, "/echo", workerCa.certPem, { headers: { authorization: "Bearer forged" } });
    expect(res.status).toBe(200);
    expect(res.issuer).toBe(workerCa.commonName);
    const seen = JSON.parse(res.body.toString());
    expect(seen.headers.authorization).toBe("Bearer tok-0123456789");
    expect(seen.headers.host).toBe(`secret.test:${secure.port}`);
    expect(events.find((e) => e.job === job && e.scheme === "https")).toMatchObject({ host: "secret.test", decision: "allowed", secrets: ["API_TOKEN"] });
    expect(JSON.stringify(events)).not.toContain("tok-0123456789");
    // Never in clear text: plain HTTP to a bound host is refused, and nothing reached the upstream.
    const before = plain.seen.length;
    const clear = await viaProxy(socket, `http://plain.test:${plain.port}/`);
    expect(clear.status).toBe(403);
    expect(clear.body.toString()).toContain("bound secret (API_TOKEN), which is sent over HTTPS only");
    expect(plain.seen.length).toBe(before);
  });

  it("applies methods and paths inside HTTPS by opening the TLS of hosts whose rules restrict them", async () => {
    const { socket } = await open(proxy(), { egress: [{ host: "api.test", methods: ["GET"], paths: ["/v1/*"] }] });
    const ok = await httpsVia(socket, "api.test", secure.port, "/v1/x", workerCa.certPem);
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body.toString()).headers.authorization).toBeUndefined();
    const post = await httpsVia(socket, "api.test", secure.port, "/v1/x", workerCa.certPem, { method: "POST" });
    expect(post.status).toBe(403);
    expect(post.body.toString()).toContain(`POST https://api.test:${secure.port}/v1/x denied by network.default`);
    expect((await httpsVia(socket, "api.test", secure.port, "/v2/x", workerCa.certPem)).status).toBe(403);
    // The upstream certificate is verified: a worker that does not trust the test CA gets 502, never the content.
    const strict = new EgressProxy({ config: { ...DEFAULT_EGRESS_CONFIG, hostsFile, allowPrivate: true }, ca: workerCa });
    proxies.push(strict);
    const { socket: s2 } = await open(strict, { egress: [{ host: "api.test", methods: ["GET"] }] });
    const untrusted = await httpsVia(s2, "api.test", secure.port, "/v1/x", workerCa.certPem);
    expect(untrusted.status).toBe(502);
    expect(untrusted.body.toString()).toContain("upstream certificate not trusted");
  });

  it("cuts a job's traffic at its byte cap and refuses more", async () => {
    const { socket, session, job } = await open(proxy(), { egress: ["plain.test", "tls.test"], maxBytes: 100_000 });
    await expect(viaProxy(socket, `http://plain.test:${plain.port}/bytes/1048576`)).rejects.toThrow();
    expect(session.bytesUsed).toBeLessThan(1_048_576);
    const after = await viaProxy(socket, `http://plain.test:${plain.port}/bytes/10`);
    expect(after.status).toBe(403);
    expect(after.body.toString()).toContain("reached its cap of 100000 bytes");
    expect((await connectVia(socket, `tls.test:${secure.port}`)).status).toBe(403);
    expect(events.filter((e) => e.job === job).map((e) => e.decision)).toContain("byte_cap");
  });

  it("keeps two concurrent jobs' policies apart", async () => {
    const p = proxy();
    const a = await open(p, { egress: ["plain.test"] });
    const b = await open(p, { egress: ["api.test"] });
    const rounds = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        Promise.all([
          viaProxy(a.socket, `http://${i % 2 ? "plain" : "api"}.test:${plain.port}/a${i}`),
          viaProxy(b.socket, `http://${i % 2 ? "plain" : "api"}.test:${plain.port}/b${i}`),
        ]),
      ),
    );
    rounds.forEach(([ra, rb], i) => {
      expect(ra.status, `job a, round ${i}`).toBe(i % 2 ? 200 : 403);
      expect(rb.status, `job b, round ${i}`).toBe(i % 2 ? 403 : 200);
    });
    expect(events.filter((e) => e.job === a.job && e.decision === "allowed").every((e) => e.host === "plain.test")).toBe(true);
    expect(events.filter((e) => e.job === b.job && e.decision === "allowed").every((e) => e.host === "api.test")).toBe(true);
    // A closed job's socket is gone; the other job is still served.
    await a.session.close();
    await expect(viaProxy(a.socket, `http://plain.test:${plain.port}/`)).rejects.toThrow();
    expect((await viaProxy(b.socket, `http://api.test:${plain.port}/`)).status).toBe(200);
  });
});

/** A non-loopback IPv4 address of this host, if it has one. */
function ownAddress(): string | undefined {
  return Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === "IPv4" && !i.internal)?.address;
}
