/**
 * The HTTP API as a service in another language sees it: curl against a
 * real `sandqueue api` (real HTTP on 127.0.0.1) with a real worker (local
 * provider) and Redis. Refused requests must enqueue nothing.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { promisify } from "node:util";
import { Validator } from "@seriousme/openapi-schema-validator";
import { Job, Queue } from "bullmq";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedis } from "../../producer/redis.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { api, startTestApi, type TestApi } from "../support/api-harness.js";
import { REDIS_URL, requireCommand, startTestWorker, tempDir, uniqueQueue } from "../support/harness.js";
import { BIN } from "../support/worker-process.js";

requireCommand("curl", "curl");
requireCommand("bwrap", "bubblewrap");
const run = promisify(execFile);

async function curl(args: string[]): Promise<{ status: number; body: string; headers: string }> {
  const { stdout } = await run("curl", ["-sS", "-D", "-", "--max-time", "30", ...args], { maxBuffer: 32 * 1024 * 1024 });
  const split = stdout.indexOf("\r\n\r\n");
  const headers = stdout.slice(0, split);
  return { status: Number(/^HTTP\/[\d.]+ (\d+)/.exec(headers)?.[1]), headers, body: stdout.slice(split + 4) };
}

describe("sandqueue api over real HTTP", () => {
  const queue = uniqueQueue("api");
  let worker: WorkerRuntime;
  let t: TestApi;
  let token: string;
  let bull: Queue;
  const redis = createRedis(REDIS_URL, "worker");
  const snapshots = `file://${tempDir("api-snapshots")}`;

  beforeAll(async () => {
    worker = await startTestWorker(queue, { concurrency: 2, snapshotsUrl: snapshots });
    t = await startTestApi(queue, { snapshotsUrl: snapshots, bodyLimitBytes: 256 * 1024, maxWaitMs: 20_000 });
    token = await t.key("svc-a");
    bull = new Queue(queue, { connection: redis, prefix: "sandq" });
  });

  afterAll(async () => {
    await bull?.close();
    await t?.server.close();
    await worker?.close(1000);
    redis.disconnect();
  });

  const jobCount = async (): Promise<number> => Object.values(await bull.getJobCounts()).reduce((a, b) => a + b, 0);
  const auth = () => ["-H", `Authorization: Bearer ${token}`];
  const json = ["-H", "Content-Type: application/json"];

  it("runs a job: POST answers 202 with an id, GET ?wait= returns the result; the key's name is the job's sender", async () => {
    const post = await curl([...auth(), ...json, "-X", "POST", "--data", JSON.stringify({ kind: "python", code: "print(6*7)", submittedBy: "someone-else" }), `${t.url}/v1/jobs`]);
    expect(post.status).toBe(202);
    const { id } = JSON.parse(post.body) as { id: string };
    expect(post.headers).toMatch(new RegExp(`location: /v1/jobs/${id}`, "i"));
    const got = await curl([...auth(), `${t.url}/v1/jobs/${id}?wait=15s`]);
    expect(got.status).toBe(200);
    const view = JSON.parse(got.body);
    expect(view).toMatchObject({ id, state: "finished", result: { id, status: "succeeded", exitCode: 0, stdout: "42\n" } });
    const job = await Job.fromId(bull, id);
    expect(job?.data.spec.submittedBy).toBe("svc-a");
  });

  it("POST ?wait= submits and waits in one request: 200 with the result, or 202 with the state when the wait ends first", async () => {
    const done = await curl([...auth(), ...json, "-X", "POST", "--data", JSON.stringify({ kind: "shell", script: "printf done" }), `${t.url}/v1/jobs?wait=15s`]);
    expect(done.status).toBe(200);
    const view = JSON.parse(done.body);
    expect(view).toMatchObject({ state: "finished", result: { status: "succeeded", stdout: "done" } });
    expect(done.headers).toMatch(new RegExp(`location: /v1/jobs/${view.id}`, "i"));

    const slow = await curl([...auth(), ...json, "-X", "POST", "--data", JSON.stringify({ kind: "shell", script: "sleep 3" }), `${t.url}/v1/jobs?wait=300ms`]);
    expect(slow.status).toBe(202);
    const pending = JSON.parse(slow.body);
    expect(["queued", "running"]).toContain(pending.state);
    expect(pending.result).toBeNull();
    // The job was enqueued all the same, and finishes.
    const later = await curl([...auth(), `${t.url}/v1/jobs/${pending.id}?wait=15s`]);
    expect(JSON.parse(later.body)).toMatchObject({ state: "finished", result: { status: "succeeded" } });

    const before = await jobCount();
    const bad = await curl([...auth(), ...json, "-X", "POST", "--data", JSON.stringify({ kind: "shell", script: "true" }), `${t.url}/v1/jobs?wait=soon`]);
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body)).toMatchObject({ code: expect.stringMatching(/^SANDQ_ERR_/), detail: expect.stringContaining("wait") });
    expect(await jobCount()).toBe(before);
  });

  it("answers the state without waiting, and 404 for a job of another key or none", async () => {
    const { json: sub } = await api(t.url, token, "POST", "/v1/jobs", { kind: "shell", script: "sleep 1" });
    const now = await api(t.url, token, "GET", `/v1/jobs/${sub.id}`);
    expect(now.status).toBe(200);
    expect(["queued", "running"]).toContain(now.json.state);
    expect(now.json.result).toBeNull();
    const other = await t.key("svc-b");
    const theirs = await api(t.url, other, "GET", `/v1/jobs/${sub.id}`);
    expect(theirs.status).toBe(404);
    expect(theirs.json.code).toBe("SANDQ_ERR_JOB_NOT_FOUND");
    expect((await api(t.url, other, "DELETE", `/v1/jobs/${sub.id}`)).status).toBe(404);
    expect((await api(t.url, token, "GET", "/v1/jobs/nope")).status).toBe(404);
    const done = await api(t.url, token, "GET", `/v1/jobs/${sub.id}?wait=10s`);
    expect(done.json.state).toBe("finished");
  });

  it("refuses a batch with one bad spec, naming index and field, and enqueues nothing", async () => {
    const before = await jobCount();
    const batch = { jobs: [{ kind: "shell", script: "true" }, { kind: "shell", script: "true", limits: { timeoutMs: 0 } }, { kind: "python", code: "1", tiemout: 5 }] };
    const r = await curl([...auth(), ...json, "-X", "POST", "--data", JSON.stringify(batch), `${t.url}/v1/jobs`]);
    expect(r.status).toBe(422);
    expect(r.headers).toMatch(/content-type: application\/problem\+json/i);
    const p = JSON.parse(r.body);
    expect(p.code).toBe("SANDQ_ERR_SPEC_INVALID");
    expect(p.errors).toEqual([
      { path: "jobs[1].limits.timeoutMs", message: "expected an integer from 1 to 86400000 ms (got 0)" },
      { path: "jobs[2]", message: "unknown field(s) 'tiemout'" },
    ]);
    expect(await jobCount()).toBe(before);
  });

  it("refuses malformed requests with problem+json and enqueues nothing", async () => {
    const before = await jobCount();
    const bigBody = `${tempDir("api-big")}/body.json`;
    writeFileSync(bigBody, JSON.stringify({ kind: "shell", script: "x".repeat(300 * 1024) }));
    const cases: { args: string[]; status: number; code: string }[] = [
      { args: [...json, "--data", "{not json"], status: 400, code: "SANDQ_ERR_REQUEST_INVALID" },
      { args: ["-H", "Content-Type: text/plain", "--data", '{"kind":"shell","script":"true"}'], status: 415, code: "SANDQ_ERR_UNSUPPORTED_MEDIA_TYPE" },
      { args: ["-H", "Content-Type: application/x-www-form-urlencoded", "--data", "kind=shell"], status: 415, code: "SANDQ_ERR_UNSUPPORTED_MEDIA_TYPE" },
      { args: [...json, "--data", `@${bigBody}`], status: 413, code: "SANDQ_ERR_BODY_TOO_LARGE" },
      { args: [...json, "--data", JSON.stringify({ kind: "ruby", code: "1" })], status: 422, code: "SANDQ_ERR_SPEC_INVALID" },
      { args: [...json, "--data", JSON.stringify({ jobs: [] })], status: 422, code: "SANDQ_ERR_SPEC_INVALID" },
      { args: [...json, "--data", JSON.stringify({ kind: "shell", script: "true", env: { __proto__: "x" } }).replace('"env":{}', '"env":{"__proto__":"x"}')], status: 422, code: "SANDQ_ERR_SPEC_INVALID" },
    ];
    for (const c of cases) {
      const r = await curl([...auth(), "-X", "POST", ...c.args, `${t.url}/v1/jobs`]);
      expect([r.status, JSON.parse(r.body).code], c.args.join(" ").slice(0, 80)).toEqual([c.status, c.code]);
      expect(r.headers).toMatch(/content-type: application\/problem\+json/i);
    }
    const unknownRoute = await curl([...auth(), `${t.url}/v1/nope`]);
    expect([unknownRoute.status, JSON.parse(unknownRoute.body).code]).toEqual([404, "SANDQ_ERR_NOT_FOUND"]);
    const badWait = await curl([...auth(), `${t.url}/v1/jobs/x?wait=soon`]);
    expect(badWait.status).toBe(404); // not this key's job: ownership is checked first
    expect(await jobCount()).toBe(before);
  });

  it("401 without a key, with a made-up one, and after revoke (through the CLI)", async () => {
    const none = await curl(["-X", "POST", ...json, "--data", '{"kind":"shell","script":"true"}', `${t.url}/v1/jobs`]);
    expect([none.status, JSON.parse(none.body).code]).toEqual([401, "SANDQ_ERR_UNAUTHORIZED"]);
    expect(none.headers).toMatch(/www-authenticate: Bearer/i);
    const fake = await api(t.url, `sq_000000000000_${"A".repeat(32)}`, "GET", "/v1/jobs/x");
    expect(fake.status).toBe(401);

    const env = { ...process.env, REDIS_URL, SANDQUEUE_QUEUE: queue, SANDQUEUE_API_SECRET_FILE: t.config.secretFile };
    const created = await run("node", [BIN, "api-key", "create", "cli-made", "--max-timeout", "5s"], { env });
    const lines = created.stdout.trim().split("\n");
    const cliToken = lines[lines.length - 1]!;
    expect(cliToken).toMatch(/^sq_[0-9a-f]{12}_[A-Za-z0-9_-]{32}$/);
    expect((await api(t.url, cliToken, "POST", "/v1/jobs", { kind: "shell", script: "true" })).status).toBe(202);
    const ls = await run("node", [BIN, "api-key", "ls", "--json"], { env });
    const listed = JSON.parse(ls.stdout) as { name: string; maxTimeoutMs?: number }[];
    expect(listed.find((k) => k.name === "cli-made")?.maxTimeoutMs).toBe(5000);
    expect(ls.stdout).not.toContain(cliToken.split("_")[2]);
    // Only a hash is in Redis: the secret part of the key appears nowhere.
    const keys = await redis.keys(`sandq-api:${queue}:*`);
    for (const k of keys) {
      const type = await redis.type(k);
      const dump = type === "hash" ? JSON.stringify(await redis.hgetall(k)) : type === "zset" ? JSON.stringify(await redis.zrange(k, 0, -1)) : "";
      expect(dump).not.toContain(cliToken.split("_")[2]);
    }
    await run("node", [BIN, "api-key", "revoke", "cli-made"], { env });
    const after = await api(t.url, cliToken, "POST", "/v1/jobs", { kind: "shell", script: "true" });
    expect([after.status, after.json.code]).toEqual([401, "SANDQ_ERR_UNAUTHORIZED"]);
  });

  it("maps Idempotency-Key to one job, per key", async () => {
    const spec = { kind: "shell", script: "echo once" };
    const a = await api(t.url, token, "POST", "/v1/jobs", spec, { "idempotency-key": "order-77" });
    const b = await api(t.url, token, "POST", "/v1/jobs", spec, { "idempotency-key": "order-77" });
    expect(a.status).toBe(202);
    expect(b.json.id).toBe(a.json.id);
    const other = await t.key("svc-idem");
    const c = await api(t.url, other, "POST", "/v1/jobs", spec, { "idempotency-key": "order-77" });
    expect(c.json.id).not.toBe(a.json.id);
    const clash = await api(t.url, token, "POST", "/v1/jobs", { ...spec, idempotencyKey: "other" }, { "idempotency-key": "order-77" });
    expect([clash.status, clash.json.errors[0].path]).toEqual([422, "idempotencyKey"]);
  });

  it("enforces a key's maximum limits, request rate and active-jobs cap with 422 / 429 + Retry-After", async () => {
    const limited = await t.key("svc-limited", { maxTimeoutMs: 2000, maxMemoryMb: 128 });
    const big = await api(t.url, limited, "POST", "/v1/jobs", { kind: "shell", script: "true", limits: { timeoutMs: 60_000 } });
    expect([big.status, big.json.code, big.json.errors[0].path]).toEqual([422, "SANDQ_ERR_LIMIT_ABOVE_MAX", "limits.timeoutMs"]);
    const inBatch = await api(t.url, limited, "POST", "/v1/jobs", { jobs: [{ kind: "shell", script: "true" }, { kind: "shell", script: "true", limits: { memoryMb: 512 } }] });
    expect([inBatch.status, inBatch.json.errors[0].path]).toEqual([422, "jobs[1].limits.memoryMb"]);
    // Left out, the workers' default (10 s) would exceed the key's maximum: the job gets the maximum.
    const ok = await api(t.url, limited, "POST", "/v1/jobs", { kind: "shell", script: "sleep 10" });
    const res = await api(t.url, limited, "GET", `/v1/jobs/${ok.json.id}?wait=15s`);
    expect(res.json.result.status).toBe("timed_out");
    expect(res.json.result.timings.execMs).toBeLessThan(5000);

    const slow = await t.key("svc-slow", { rate: { perSec: 2, burst: 2 } });
    const codes: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < 4; i++) {
      const r = await api(t.url, slow, "GET", "/v1/jobs/x");
      codes.push(r.status);
      if (r.status === 429) retryAfter = r.headers.get("retry-after");
    }
    expect(codes.slice(0, 2)).toEqual([404, 404]);
    expect(codes.slice(2)).toContain(429);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
    await new Promise((r) => setTimeout(r, 1100));
    expect((await api(t.url, slow, "GET", "/v1/jobs/x")).status).toBe(404);

    const capped = await t.key("svc-capped", { maxActive: 2 });
    const before = await jobCount();
    const two = await api(t.url, capped, "POST", "/v1/jobs", { jobs: [{ kind: "shell", script: "sleep 1" }, { kind: "shell", script: "sleep 1" }] });
    expect(two.status).toBe(202);
    const third = await api(t.url, capped, "POST", "/v1/jobs", { kind: "shell", script: "true" });
    expect([third.status, third.json.code]).toEqual([429, "SANDQ_ERR_ACTIVE_JOBS_LIMIT"]);
    expect(third.headers.get("retry-after")).toBe("1");
    expect(await jobCount()).toBe(before + 2);
    for (const id of two.json.ids) await api(t.url, capped, "GET", `/v1/jobs/${id}?wait=15s`);
    expect((await api(t.url, capped, "POST", "/v1/jobs", { kind: "shell", script: "true" })).status).toBe(202);
  });

  it("cancels a running job (killed/cancelled) and a queued one (gone)", async () => {
    const { json: sub } = await api(t.url, token, "POST", "/v1/jobs", { kind: "shell", script: "sleep 30" });
    for (let i = 0; i < 100 && (await api(t.url, token, "GET", `/v1/jobs/${sub.id}`)).json.state !== "running"; i++) await new Promise((r) => setTimeout(r, 50));
    const del = await curl([...auth(), "-X", "DELETE", `${t.url}/v1/jobs/${sub.id}`]);
    expect(JSON.parse(del.body)).toEqual({ id: sub.id, cancelled: true });
    const res = await api(t.url, token, "GET", `/v1/jobs/${sub.id}?wait=10s`);
    expect([res.json.result.status, res.json.result.reason]).toEqual(["killed", "cancelled"]);
    expect((await api(t.url, token, "DELETE", `/v1/jobs/${sub.id}`)).json.cancelled).toBe(false);
  });

  it("streams a job's events (SSE) from running to its result", async () => {
    const { json: sub } = await api(t.url, token, "POST", "/v1/jobs", { kind: "shell", script: "sleep 0.5; echo streamed" });
    const r = await curl([...auth(), "-N", `${t.url}/v1/jobs/${sub.id}/events`]);
    expect(r.headers).toMatch(/content-type: text\/event-stream/i);
    const events = r.body
      .split("\n\n")
      .filter((b) => b.startsWith("event:"))
      .map((b) => ({ event: /^event: (.+)$/m.exec(b)![1], data: JSON.parse(/^data: (.+)$/m.exec(b)![1]!) }));
    expect(events.at(-1)).toMatchObject({ event: "result", data: { id: sub.id, state: "finished", result: { status: "succeeded", stdout: "streamed\n" } } });
    expect(events.slice(0, -1).map((e) => e.data.state)).toContain("running");
    for (const e of events.slice(0, -1)) expect(["queued", "running"]).toContain(e.data.state);
  });

  it("streams a snapshot the job persisted, byte for byte", async () => {
    const { json: sub } = await api(t.url, token, "POST", "/v1/jobs", { kind: "shell", script: "echo kept > out.txt", workspace: { persist: true } });
    const { json: done } = await api(t.url, token, "GET", `/v1/jobs/${sub.id}?wait=15s`);
    const snap = done.result.snapshot.id as string;
    const dir = tempDir("api-snap");
    const r = await run("curl", ["-sS", "-o", `${dir}/s.tar`, "-w", "%{http_code} %{content_type}", ...auth(), `${t.url}/v1/snapshots/${snap}`]);
    expect(r.stdout).toBe("200 application/x-tar");
    expect(`sha256:${createHash("sha256").update(readFileSync(`${dir}/s.tar`)).digest("hex")}`).toBe(snap);
    const { stdout: listing } = await run("tar", ["-tf", `${dir}/s.tar`]);
    expect(listing).toContain("out.txt");
    const missing = await api(t.url, token, "GET", `/v1/snapshots/sha256:${"0".repeat(64)}`);
    expect([missing.status, missing.json.code]).toEqual([404, "SANDQ_ERR_SNAPSHOT_NOT_FOUND"]);
  });

  it("serves an OpenAPI 3.1 document that an independent validator accepts, generated from the spec schema", async () => {
    const { json: doc, status } = await api(t.url, null, "GET", "/openapi.json");
    expect(status).toBe(200);
    expect(doc.openapi).toBe("3.1.0");
    const validator = new Validator();
    const res = await validator.validate(doc);
    expect(res.errors ?? []).toEqual([]);
    expect(res.valid).toBe(true);
    expect(validator.version).toBe("3.1");
    const spec = doc.components.schemas.JobSpec;
    const shell = spec.oneOf.find((s: { properties: { kind: { const: string } } }) => s.properties.kind.const === "shell");
    expect(shell.additionalProperties).toBe(false);
    expect(shell.properties.limits.properties.timeoutMs).toMatchObject({ type: "integer", minimum: 1, maximum: 86_400_000 });
    expect(shell.properties.callbackUrl).toBeDefined();
    expect(doc.paths["/v1/jobs"].post.requestBody.content["application/json"].schema.oneOf).toEqual([
      { $ref: "#/components/schemas/JobSpec" },
      { $ref: "#/components/schemas/JobBatch" },
    ]);
  });

  it("answers /healthz, /readyz and /metrics without a key", async () => {
    expect((await api(t.url, null, "GET", "/healthz")).text).toBe("ok\n");
    expect((await api(t.url, null, "GET", "/readyz")).json).toEqual({ ready: true, checks: { redis: "ok" } });
    const m = (await api(t.url, null, "GET", "/metrics")).text;
    expect(m).toMatch(new RegExp(`sandqueue_api_requests_total\\{queue="${queue}",route="/v1/jobs",method="POST",status="202"\\} \\d+`));
    expect(m).toMatch(new RegExp(`sandqueue_api_jobs_submitted_total\\{queue="${queue}",key="svc-a"\\} [1-9]`));
    expect(m).toMatch(/sandqueue_api_refused_total\{[^}]*code="SANDQ_ERR_SPEC_INVALID"\} [1-9]/);
    expect(m).not.toMatch(/route="[^"]*_[0-9a-f]{8}-/); // no job id as a label
  });
});
