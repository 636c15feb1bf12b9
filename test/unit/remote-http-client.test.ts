/**
 * The remote services' HTTP client against a scripted server on 127.0.0.1:
 * which failures it retries, how it honours 429, what it never resends, and
 * that a key never reaches an error message.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RemoteHttpClient, retryAfterMs } from "../../providers/remote/http-client.js";

let server: http.Server;
let url: string;
/** Answers to give, in order; then 200 {"ok":true}. */
let script: Array<{ status: number; headers?: Record<string, string>; body?: string; hang?: boolean }> = [];
let seen: Array<{ method: string; key: string | undefined }> = [];

beforeAll(async () => {
  server = http.createServer((req, res) => {
    seen.push({ method: req.method ?? "", key: req.headers["x-api-key"] as string | undefined });
    req.resume();
    const next = script.shift();
    if (next?.hang) return;
    const status = next?.status ?? 200;
    res.writeHead(status, { "Content-Type": "application/json", ...next?.headers });
    res.end(next?.body ?? JSON.stringify({ ok: status < 400 }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

function client(over: Partial<ConstructorParameters<typeof RemoteHttpClient>[0]> = {}): RemoteHttpClient {
  script = [];
  seen = [];
  return new RemoteHttpClient({ service: "svc", baseUrl: url, headers: { "X-API-Key": "secret-key-123" }, timeoutMs: 2000, retries: 3, backoffMs: 10, ...over });
}

describe("remote HTTP client", () => {
  it("retries 5xx bursts of idempotent requests, then answers", async () => {
    const c = client();
    script = [{ status: 503 }, { status: 502 }];
    const r = await c.request({ method: "GET", path: "/x" });
    expect(r.json()).toEqual({ ok: true });
    expect(seen).toHaveLength(3);
    expect(seen[0]!.key).toBe("secret-key-123");
  });

  it("gives up after its retries with PROVIDER_UNAVAILABLE (retryable)", async () => {
    const c = client({ retries: 2 });
    script = [{ status: 500 }, { status: 500 }, { status: 500 }, { status: 500 }];
    await expect(c.request({ method: "GET", path: "/x" })).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true, status: 500 });
    expect(seen).toHaveLength(3);
  });

  it("never resends a request that is not idempotent after a 5xx", async () => {
    const c = client();
    script = [{ status: 503 }];
    await expect(c.request({ method: "POST", path: "/exec", json: {}, idempotent: false })).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE" });
    expect(seen).toHaveLength(1);
  });

  it("401 and 403 are PROVIDER_CREDENTIALS at once, without the key in the message", async () => {
    for (const status of [401, 403]) {
      const c = client();
      script = [{ status, body: '{"detail":"Invalid or missing API key"}' }];
      const err = (await c.request({ method: "GET", path: "/x" }).then(() => null, (e: unknown) => e)) as Error;
      expect(err).toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
      expect(err.message).toContain("Invalid or missing API key");
      expect(err.message).not.toContain("secret-key-123");
      expect(seen).toHaveLength(1);
    }
  });

  it("waits as long as Retry-After says (seconds or an HTTP date), even for a request that is not idempotent", async () => {
    const c = client();
    script = [{ status: 429, headers: { "Retry-After": "1" } }];
    let t0 = Date.now();
    await c.request({ method: "POST", path: "/exec", idempotent: false });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(950);
    expect(seen).toHaveLength(2);
    script = [{ status: 429, headers: { "Retry-After": new Date(Date.now() + 2000).toUTCString() } }];
    t0 = Date.now();
    await c.request({ method: "GET", path: "/x" });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
  });

  it("a 429 it cannot wait out is PROVIDER_RATE_LIMITED carrying the wait", async () => {
    const c = client({ maxRetryAfterMs: 5000 });
    script = [{ status: 429, headers: { "Retry-After": "60" } }];
    await expect(c.request({ method: "GET", path: "/x" })).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_RATE_LIMITED", retryable: true, retryAfterMs: 60_000 });
    expect(seen).toHaveLength(1);
  });

  it("hands back accepted statuses; other 4xx are PROVIDER_FAILED, not retried", async () => {
    const c = client();
    script = [{ status: 404, body: '{"detail":"gone"}' }];
    expect((await c.request({ method: "GET", path: "/x", accept: [404] })).status).toBe(404);
    script = [{ status: 422, body: '{"detail":"bad"}' }];
    await expect(c.request({ method: "GET", path: "/x" })).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED", retryable: false, status: 422 });
    expect(seen).toHaveLength(2);
  });

  it("retries an attempt that times out; the caller's abort ends it at once", async () => {
    const c = client({ timeoutMs: 200 });
    script = [{ status: 0, hang: true }];
    await c.request({ method: "GET", path: "/x" });
    expect(seen).toHaveLength(2);
    script = [{ status: 0, hang: true }];
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const t0 = Date.now();
    await expect(c.request({ method: "GET", path: "/x", signal: ac.signal, timeoutMs: 10_000 })).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(seen).toHaveLength(3);
  });

  it("reads Retry-After", () => {
    expect(retryAfterMs("3")).toBe(3000);
    expect(retryAfterMs(null)).toBeUndefined();
    expect(retryAfterMs("soon")).toBeUndefined();
    expect(retryAfterMs(new Date(Date.now() - 5000).toUTCString())).toBe(0);
  });
});
