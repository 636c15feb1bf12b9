/**
 * `npm run bench -- api`: the HTTP API against the Node client doing the
 * same, measured in the same run and interleaved, so the ratios hold on a
 * noisy shared machine:
 *
 * - batch enqueue: 1,000 specs in one POST vs one `enqueueMany` (no worker
 *   on that queue; throughput in specs per second; target >= 0.8x);
 * - single-job round trip: POST then GET ?wait= vs `enqueue` then
 *   `waitForResult`, sequentially, through a real worker on the local
 *   provider (target: p50 at most 3 ms above the client's).
 *
 * The API runs as its own process (`sandqueue api`), as it would beside a
 * service; the HTTP side uses node:http with keep-alive, as a service's
 * HTTP client would.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { Agent, request } from "node:http";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { ApiKeyStore, dropApiState } from "../api/api-keys.js";
import { webhookQueueName } from "../api/webhook-queue.js";
import { SandqueueClient } from "../producer/client.js";
import { dropQueue } from "../producer/drop-queue.js";
import { withProducerConnection } from "../producer/redis.js";
import { parseWorkerConfig } from "../worker/config.js";
import { silentLogger } from "../worker/log.js";
import { startWorkerRuntime } from "../worker/runtime.js";
import { quantile } from "./stats.js";

const BIN = join(import.meta.dirname, "../../bin/sandqueue.js");

export interface ApiBenchResult {
  batchSize: number;
  rounds: number;
  /** Specs per second, one figure per round. */
  batch: { client: number[]; api: number[] };
  /** Round-trip latencies (ms). */
  roundTrip: { client: number[]; api: number[]; oneRequest: number[] };
}

interface HttpAnswer {
  status: number;
  body: string;
}

function httpCall(agent: Agent, port: number, token: string, method: string, path: string, body?: string): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port, method, path, agent, headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json", "content-length": Buffer.byteLength(body) } : {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

async function startApiProcess(env: NodeJS.ProcessEnv): Promise<{ proc: ChildProcess; port: number }> {
  const proc = spawn("node", [BIN, "api", "--port", "0"], { env, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sandqueue api did not start: ${log}`)), 15_000);
    proc.stderr!.on("data", (d: Buffer) => {
      log += d.toString();
      const m = /"event":"api\.listening".*?"url":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.on("exit", (code) => reject(new Error(`sandqueue api exited ${code}: ${log}`)));
  });
  return { proc, port };
}

export async function runApiBench(
  batchSize = Number(process.env.BENCH_API_BATCH ?? 1000),
  rounds = Number(process.env.BENCH_ROUNDS ?? 9),
  trips = Number(process.env.BENCH_N ?? 200),
): Promise<ApiBenchResult> {
  const tag = randomBytes(4).toString("hex");
  const batchQueue = `bench-api-batch-${tag}`;
  const tripQueue = `bench-api-trip-${tag}`;
  const dir = mkdtempSync(join(tmpdir(), "sandq-api-bench-"));
  const workerConfig = parseWorkerConfig(process.env, {}, { queue: tripQueue, concurrency: availableParallelism(), metricsPort: 0, logJobs: false, providerSettings: { workRoot: join(dir, "work") } });
  const redisUrl = workerConfig.redisUrl;
  const prefix = workerConfig.prefix;
  const runtime = await startWorkerRuntime(workerConfig, silentLogger);
  const baseEnv = { ...process.env, REDIS_URL: redisUrl, SANDQUEUE_LOG: "false", SANDQUEUE_API_SECRET_FILE: join(dir, "secret"), SANDQUEUE_WEBHOOK_CONCURRENCY: "0", SANDQUEUE_API_HOST: "127.0.0.1" };
  const batchApi = await startApiProcess({ ...baseEnv, SANDQUEUE_QUEUE: batchQueue });
  const tripApi = await startApiProcess({ ...baseEnv, SANDQUEUE_QUEUE: tripQueue });
  const tokens = await withProducerConnection(redisUrl, async (r) => ({
    batch: (await new ApiKeyStore(r, prefix, batchQueue).create("bench", { callbacks: false, ui: false })).token,
    trip: (await new ApiKeyStore(r, prefix, tripQueue).create("bench", { callbacks: false, ui: false })).token,
  }));
  const batchClient = new SandqueueClient({ redisUrl, queue: batchQueue, prefix });
  const tripClient = new SandqueueClient({ redisUrl, queue: tripQueue, prefix });
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  const result: ApiBenchResult = { batchSize, rounds, batch: { client: [], api: [] }, roundTrip: { client: [], api: [], oneRequest: [] } };

  try {
    const specs = Array.from({ length: batchSize }, (_, i) => ({ kind: "shell", script: `echo ${i}`, labels: { bench: "api" } }));
    const batchBody = JSON.stringify({ jobs: specs });
    const viaClient = async (): Promise<number> => {
      const t0 = performance.now();
      await batchClient.enqueueMany(specs);
      return performance.now() - t0;
    };
    const viaApi = async (): Promise<number> => {
      const t0 = performance.now();
      const r = await httpCall(agent, batchApi.port, tokens.batch, "POST", "/v1/jobs", batchBody);
      if (r.status !== 202) throw new Error(`POST answered ${r.status}: ${r.body.slice(0, 300)}`);
      return performance.now() - t0;
    };
    // Warm both sides (the API process's validation and BullMQ paths JIT-compile as the client's do).
    for (let i = 0; i < 10; i++) {
      await viaClient();
      await viaApi();
    }
    for (let i = 0; i < rounds; i++) {
      // Alternate which goes first, so neither always meets a warmer Redis.
      const order = i % 2 === 0 ? [viaClient, viaApi] : [viaApi, viaClient];
      for (const f of order) {
        const ms = await f();
        (f === viaClient ? result.batch.client : result.batch.api).push((batchSize * 1000) / ms);
      }
    }
    await dropQueue(redisUrl, batchQueue, prefix);

    const trip = { kind: "shell", script: "true" };
    const tripBody = JSON.stringify(trip);
    const clientTrip = async (): Promise<number> => {
      const t0 = performance.now();
      const { id } = await tripClient.enqueue(trip);
      await tripClient.waitForResult(id, { timeoutMs: 30_000 });
      return performance.now() - t0;
    };
    const apiTrip = async (): Promise<number> => {
      const t0 = performance.now();
      const post = await httpCall(agent, tripApi.port, tokens.trip, "POST", "/v1/jobs", tripBody);
      const { id } = JSON.parse(post.body) as { id: string };
      const got = await httpCall(agent, tripApi.port, tokens.trip, "GET", `/v1/jobs/${id}?wait=30s`);
      if ((JSON.parse(got.body) as { state: string }).state !== "finished") throw new Error(`no result: ${got.body.slice(0, 300)}`);
      return performance.now() - t0;
    };
    // Not the target's measure (that is POST then a long-poll): submit-and-wait in one request, printed beside it.
    const oneRequestTrip = async (): Promise<number> => {
      const t0 = performance.now();
      const post = await httpCall(agent, tripApi.port, tokens.trip, "POST", "/v1/jobs?wait=30s", tripBody);
      if (post.status !== 200) throw new Error(`POST ?wait= answered ${post.status}: ${post.body.slice(0, 300)}`);
      return performance.now() - t0;
    };
    for (let i = 0; i < 100; i++) {
      await clientTrip();
      await apiTrip();
      await oneRequestTrip();
    }
    // Blocks of ten, rotating which goes first, so load changes on the machine hit all alike.
    const kinds = [
      { f: clientTrip, into: result.roundTrip.client },
      { f: apiTrip, into: result.roundTrip.api },
      { f: oneRequestTrip, into: result.roundTrip.oneRequest },
    ];
    for (let block = 0; block < trips / 10; block++) {
      for (let k = 0; k < kinds.length; k++) {
        const { f, into } = kinds[(block + k) % kinds.length]!;
        for (let i = 0; i < 10; i++) into.push(await f());
      }
    }
  } finally {
    agent.destroy();
    await batchClient.close();
    await tripClient.close();
    for (const p of [batchApi.proc, tripApi.proc]) {
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    }
    await runtime.close();
    for (const q of [batchQueue, tripQueue]) {
      await dropQueue(redisUrl, q, prefix).catch(() => {});
      await dropQueue(redisUrl, webhookQueueName(q), prefix).catch(() => {});
      await withProducerConnection(redisUrl, (r) => dropApiState(r, prefix, q)).catch(() => {});
    }
    rmSync(dir, { recursive: true, force: true });
  }
  return result;
}

export function reportApiBench(r: ApiBenchResult): string {
  const med = (xs: number[]): number => quantile(xs, 0.5);
  const ratios = r.batch.api.map((a, i) => a / r.batch.client[i]!);
  const p50c = med(r.roundTrip.client);
  const p50a = med(r.roundTrip.api);
  const p50o = med(r.roundTrip.oneRequest);
  const signed = (x: number): string => `${x >= 0 ? "+" : ""}${x.toFixed(2)}`;
  return [
    `  batch enqueue of ${r.batchSize} specs, ${r.rounds} rounds (specs/s, median; per-round API/client ratios ${ratios.map((x) => x.toFixed(2)).join(" ")})`,
    `    Node client enqueueMany   ${med(r.batch.client).toFixed(0).padStart(7)}/s`,
    `    POST /v1/jobs {"jobs"}    ${med(r.batch.api).toFixed(0).padStart(7)}/s   ratio ${med(ratios).toFixed(2)}x (target >= 0.8x)`,
    `  single-job round trip, sequential, ${r.roundTrip.client.length} each (trivial shell job, local provider)`,
    `    Node client enqueue + waitForResult   p50 ${p50c.toFixed(2)} ms  p99 ${quantile(r.roundTrip.client, 0.99).toFixed(2)} ms`,
    `    POST + GET ?wait=                     p50 ${p50a.toFixed(2)} ms  p99 ${quantile(r.roundTrip.api, 0.99).toFixed(2)} ms   difference ${signed(p50a - p50c)} ms (target <= +3 ms)`,
    `    POST ?wait= (one request)             p50 ${p50o.toFixed(2)} ms  p99 ${quantile(r.roundTrip.oneRequest, 0.99).toFixed(2)} ms   difference ${signed(p50o - p50c)} ms`,
  ].join("\n");
}
