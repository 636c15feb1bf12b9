/**
 * Webhooks end to end: a receiver on 127.0.0.1 checks every delivery's
 * Standard Webhooks signature (computed here from the scheme, with the
 * secret the CLI prints), fails on purpose, and sees the retries; a
 * receiver that never answers 2xx ends in the dead letters; refused
 * targets never get a request.
 */
import { execFile } from "node:child_process";
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { api, startTestApi, type TestApi } from "../support/api-harness.js";
import { REDIS_URL, requireCommand, startTestWorker, uniqueQueue } from "../support/harness.js";
import { BIN } from "../support/worker-process.js";

requireCommand("bwrap", "bubblewrap");
const run = promisify(execFile);

interface Delivery {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
}

/** The scheme, written out from the spec: HMAC-SHA256 over "id.timestamp.body" with the whsec_ secret's bytes. */
function signatureValid(secret: string, h: IncomingHttpHeaders, body: string): boolean {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = createHmac("sha256", key).update(`${h["webhook-id"]}.${h["webhook-timestamp"]}.${body}`).digest();
  return String(h["webhook-signature"])
    .split(" ")
    .some((s) => {
      const got = Buffer.from(s.replace(/^v1,/, ""), "base64");
      return s.startsWith("v1,") && got.length === expected.length && timingSafeEqual(got, expected);
    });
}

describe("signed webhooks with retries and dead letters", () => {
  const queue = uniqueQueue("hooks");
  let worker: WorkerRuntime;
  let t: TestApi;
  let strict: TestApi;
  let token: string;
  let secret: string;
  let receiver: Server;
  let base = "";
  const deliveries: Delivery[] = [];
  /** Per path: the status codes to answer, in order (the last one repeats). */
  const plan = new Map<string, number[]>();

  beforeAll(async () => {
    receiver = createServer((req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString()));
      req.on("end", () => {
        const path = req.url ?? "/";
        const seen = deliveries.filter((d) => d.path === path).length;
        deliveries.push({ path, headers: req.headers, body, at: Date.now() });
        const codes = plan.get(path) ?? [200];
        res.writeHead(codes[Math.min(seen, codes.length - 1)]!).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
    worker = await startTestWorker(queue, { concurrency: 2 });
    t = await startTestApi(queue, { callbackAllow: ["loopback"], webhookAttempts: 3, webhookBackoffMs: 100 });
    // A second instance on the same queue with the default policy (nothing but public addresses).
    strict = await startTestApi(queue, { secretFile: t.config.secretFile, webhookConcurrency: 0 });
    token = await t.key("hooks", { callbacks: true });
    const env = { ...process.env, REDIS_URL, SANDQUEUE_QUEUE: queue, SANDQUEUE_API_SECRET_FILE: t.config.secretFile };
    secret = (await run("node", [BIN, "api-key", "webhook-secret", "hooks"], { env })).stdout.trim();
    expect(secret).toMatch(/^whsec_/);
  });

  afterAll(async () => {
    await strict?.server.close();
    await t?.server.close();
    await worker?.close(1000);
    await new Promise((r) => receiver?.close(r));
  });

  async function until<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; deliveries: ${JSON.stringify(deliveries.map((d) => d.path))}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  it("POSTs the signed result, retrying a failing receiver with backoff; every try is the same message", async () => {
    plan.set("/flaky", [500, 503, 204]);
    const { json: sub, status } = await api(t.url, token, "POST", "/v1/jobs", { kind: "shell", script: "echo hooked; exit 4", callbackUrl: `${base}/flaky` });
    expect(status).toBe(202);
    const got = await until("three deliveries", () => {
      const d = deliveries.filter((x) => x.path === "/flaky");
      return d.length >= 3 ? d : undefined;
    });
    await new Promise((r) => setTimeout(r, 500));
    expect(deliveries.filter((x) => x.path === "/flaky")).toHaveLength(3); // delivered on the third: no fourth
    for (const d of got) {
      expect(d.headers["webhook-id"]).toBe(`msg_${sub.id}`);
      expect(d.headers["content-type"]).toBe("application/json");
      expect(Math.abs(Number(d.headers["webhook-timestamp"]) - Date.now() / 1000)).toBeLessThan(60);
      expect(signatureValid(secret, d.headers, d.body)).toBe(true);
      expect(signatureValid(secret, d.headers, d.body.replace("hooked", "hacked"))).toBe(false);
      expect(d.body).toBe(got[0]!.body);
    }
    // Exponential backoff: the second gap is longer than the first.
    expect(got[2]!.at - got[1]!.at).toBeGreaterThan(got[1]!.at - got[0]!.at);
    const payload = JSON.parse(got[0]!.body);
    const view = (await api(t.url, token, "GET", `/v1/jobs/${sub.id}`)).json;
    expect(payload).toMatchObject({ type: "job.finished", data: view });
    expect(payload.data.result).toMatchObject({ status: "failed", exitCode: 4, stdout: "hooked\n" });
  });

  it("dead-letters a delivery after the last try, shows it, and delivers it when retried", async () => {
    plan.set("/down", [503]);
    const { json: sub } = await api(t.url, token, "POST", "/v1/jobs", { kind: "python", code: "print(1)", callbackUrl: `${base}/down` });
    const dead = await until("a dead letter", async () => {
      const r = await api(t.url, token, "GET", "/v1/webhooks/dead");
      return r.json.deadLetters.find((d: { jobId: string }) => d.jobId === sub.id) as { id: string; attempts: number; error: string; url: string } | undefined;
    });
    expect(dead).toMatchObject({ attempts: 3, url: `${base}/down` });
    expect(dead.error).toMatch(/SANDQ_ERR_WEBHOOK_DELIVERY|answered 503/);
    expect(deliveries.filter((d) => d.path === "/down")).toHaveLength(3);
    const metrics = (await api(t.url, null, "GET", "/metrics")).text;
    expect(metrics).toMatch(new RegExp(`sandqueue_webhook_deliveries_total\\{queue="${queue}",outcome="dead"\\} 1`));
    expect(metrics).toMatch(new RegExp(`sandqueue_webhook_jobs\\{queue="${queue}",state="dead"\\} 1`));
    // Another key sees none of it.
    const other = await t.key("hooks-other", { callbacks: true });
    expect((await api(t.url, other, "GET", "/v1/webhooks/dead")).json.deadLetters).toEqual([]);
    expect((await api(t.url, other, "POST", `/v1/webhooks/dead/${dead.id}/retry`)).status).toBe(404);

    plan.set("/down", [200]);
    expect((await api(t.url, token, "POST", `/v1/webhooks/dead/${dead.id}/retry`)).status).toBe(202);
    await until("the retried delivery", () => (deliveries.filter((d) => d.path === "/down").length === 4 ? true : undefined));
    await until("no dead letter", async () => ((await api(t.url, token, "GET", "/v1/webhooks/dead")).json.deadLetters.length === 0 ? true : undefined));
  });

  it("signs a delivery retried after a secret rotation with the new secret, not the old one", async () => {
    const name = "hooks-rotating";
    const keyToken = await t.key(name, { callbacks: true });
    const env = { ...process.env, REDIS_URL, SANDQUEUE_QUEUE: queue, SANDQUEUE_API_SECRET_FILE: t.config.secretFile };
    const secretOf = async (...args: string[]) => (await run("node", [BIN, "api-key", "webhook-secret", name, ...args], { env })).stdout.trim().split("\n").pop()!;
    const old = await secretOf();
    plan.set("/rotate", [503]);
    const { json: sub } = await api(t.url, keyToken, "POST", "/v1/jobs", { kind: "shell", script: "echo r", callbackUrl: `${base}/rotate` });
    const dead = await until("a dead letter", async () => {
      const r = await api(t.url, keyToken, "GET", "/v1/webhooks/dead");
      return r.json.deadLetters.find((d: { jobId: string }) => d.jobId === sub.id) as { id: string } | undefined;
    });
    const first = deliveries.find((d) => d.path === "/rotate")!;
    expect(signatureValid(old, first.headers, first.body)).toBe(true);

    const rotated = await secretOf("--rotate");
    expect(rotated).toMatch(/^whsec_/);
    expect(rotated).not.toBe(old);
    plan.set("/rotate", [200]);
    expect((await api(t.url, keyToken, "POST", `/v1/webhooks/dead/${dead.id}/retry`)).status).toBe(202);
    const last = await until("the retried delivery", () => deliveries.filter((d) => d.path === "/rotate")[3]);
    expect(last.body).toBe(first.body);
    expect(last.headers["webhook-id"]).toBe(first.headers["webhook-id"]);
    expect(signatureValid(rotated, last.headers, last.body)).toBe(true);
    expect(signatureValid(old, last.headers, last.body)).toBe(false);
  });

  it("tells the receiver when a queued job is cancelled", async () => {
    const blockers = await api(t.url, token, "POST", "/v1/jobs", { jobs: [{ kind: "shell", script: "sleep 1" }, { kind: "shell", script: "sleep 1" }] });
    const { json: sub } = await api(t.url, token, "POST", "/v1/jobs", { kind: "shell", script: "echo never", callbackUrl: `${base}/cancelled` });
    expect((await api(t.url, token, "DELETE", `/v1/jobs/${sub.id}`)).json.cancelled).toBe(true);
    const d = await until("the cancel delivery", () => deliveries.find((x) => x.path === "/cancelled"));
    expect(JSON.parse(d.body)).toMatchObject({ type: "job.cancelled", data: { id: sub.id, state: "cancelled", result: null } });
    expect(signatureValid(secret, d.headers, d.body)).toBe(true);
    for (const id of blockers.json.ids) await api(t.url, token, "GET", `/v1/jobs/${id}?wait=10s`);
  });

  it("refuses loopback, private and link-local targets unless allowed, and callbacks for keys without --callbacks", async () => {
    const before = deliveries.length;
    const strictKey = await strict.server.keys.get("hooks");
    expect(strictKey?.callbacks).toBe(true);
    const refusals: [TestApi, string][] = [
      [strict, `${base}/x`],
      [strict, `http://localhost:${new URL(base).port}/x`],
      [strict, "http://[::1]/x"],
      [t, "http://169.254.169.254/latest/meta-data"],
      [t, "http://10.0.0.1/x"],
      [t, "http://[::ffff:192.168.1.1]/x"],
      [t, "http://0.0.0.0/x"],
    ];
    for (const [server, url] of refusals) {
      const r = await api(server.url, token, "POST", "/v1/jobs", { kind: "shell", script: "true", callbackUrl: url });
      expect([r.status, r.json.code, r.json.errors?.[0]?.path], url).toEqual([422, "SANDQ_ERR_CALLBACK_REFUSED", "callbackUrl"]);
    }
    const batch = await api(t.url, token, "POST", "/v1/jobs", { jobs: [{ kind: "shell", script: "true" }, { kind: "shell", script: "true", callbackUrl: "http://10.0.0.1/x" }] });
    expect([batch.status, batch.json.errors[0].path]).toEqual([422, "jobs[1].callbackUrl"]);
    const plain = await t.key("no-callbacks");
    const forbidden = await api(t.url, plain, "POST", "/v1/jobs", { kind: "shell", script: "true", callbackUrl: `${base}/x` });
    expect([forbidden.status, forbidden.json.code]).toEqual([403, "SANDQ_ERR_FORBIDDEN"]);
    const scheme = await api(t.url, token, "POST", "/v1/jobs", { kind: "shell", script: "true", callbackUrl: "file:///etc/passwd" });
    expect([scheme.status, scheme.json.errors[0].path]).toEqual([422, "callbackUrl"]);
    await new Promise((r) => setTimeout(r, 300));
    expect(deliveries.length).toBe(before);
  });
});
