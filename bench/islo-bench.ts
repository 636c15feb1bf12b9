/**
 * `npm run bench -- islo`: p50 per job at concurrency 1, through sandqueue
 * (a job enqueued on Redis, run by an in-process worker with the islo
 * provider, result awaited) vs a minimal client making only islo's own calls
 * for the same work (create, files-archive upload, exec, polls; delete in the
 * background, as the worker releases in the background), both against one
 * islo stand-in in the same run, interleaved. The job: a python3 one-liner
 * reading an inline file. Target: ratio <= 1.1. Needs Redis, root and
 * bubblewrap.
 */
import { mkdtemp, rm, rmdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { gzipSync } from "node:zlib";
import { LocalProvider } from "../providers/local/index.js";
import { filesToTar } from "../providers/archive/index.js";
import { IsloStandin } from "../standins/islo/index.js";
import { SandqueueClient } from "../producer/index.js";
import { parseWorkerConfig } from "../worker/config.js";
import { silentLogger } from "../worker/log.js";
import { startWorkerRuntime } from "../worker/runtime.js";
import { fmt, stats, type RunStats } from "./stats.js";

export interface IsloBenchResult {
  sandqueue: RunStats;
  minimal: RunStats;
}

const CODE = "print(open('in.txt').read(), end='')";

/** The minimal client: fetch, islo's paths, nothing else. */
class MinimalIslo {
  private token = "";
  constructor(
    private readonly control: string,
    private readonly compute: string,
    private readonly key: string,
  ) {}

  async login(): Promise<void> {
    const res = await fetch(`${this.control}/auth/token`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ access_key: this.key }) });
    this.token = ((await res.json()) as { session_token: string }).session_token;
  }

  private async call(method: string, p: string, body?: unknown): Promise<Response> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token}` };
    let payload: FormData | string | undefined;
    if (body instanceof FormData) payload = body;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const res = await fetch(`${this.compute}${p}`, { method, headers, ...(payload ? { body: payload } : {}) });
    if (res.status >= 400) throw new Error(`${method} ${p}: HTTP ${res.status} ${await res.text()}`);
    return res;
  }

  /** One job; resolves once its output is known. The delete runs on. */
  async job(i: number, pending: Promise<unknown>[]): Promise<void> {
    const name = `bench-${randomBytes(4).toString("hex")}`;
    await (await this.call("POST", "/sandboxes", { name, image: "host", memory_mb: 256, internet_enabled: false })).arrayBuffer();
    const chunks: Buffer[] = [];
    for await (const c of filesToTar({ "in.txt": `job ${i}\n` })) chunks.push(c as Buffer);
    const form = new FormData();
    form.append("file", new Blob([gzipSync(Buffer.concat(chunks), { level: 1 })], { type: "application/gzip" }), "archive.tar.gz");
    await (await this.call("POST", `/sandboxes/${name}/files-archive?path=%2Fworkspace`, form)).arrayBuffer();
    const { exec_id } = (await (await this.call("POST", `/sandboxes/${name}/exec`, { command: ["python3", "-c", CODE], env: { PATH: "/usr/bin:/bin" }, workdir: "/workspace" })).json()) as { exec_id: string };
    // Same poll schedule as the provider: 10 ms, doubling.
    for (let delay = 10; ; delay = Math.min(delay * 2, 500)) {
      const r = (await (await this.call("GET", `/sandboxes/${name}/exec/${exec_id}`)).json()) as { status: string; stdout: string };
      if (r.status !== "running") {
        if (r.stdout !== `job ${i}\n`) throw new Error(`minimal job ${i}: unexpected output ${JSON.stringify(r.stdout)}`);
        break;
      }
      await new Promise((res) => setTimeout(res, delay));
    }
    pending.push(this.call("DELETE", `/sandboxes/${name}`).then((r) => r.arrayBuffer()));
  }
}

export async function runIsloBench(rounds = Number(process.env.SANDQUEUE_BENCH_ISLO_JOBS ?? 40)): Promise<IsloBenchResult> {
  const workRoot = await mkdtemp(path.join(os.tmpdir(), "sandqueue-islo-bench-"));
  const local = new LocalProvider({ workRoot: path.join(workRoot, "standin"), cgroupParent: `sandqueue-islo-bench-${process.pid}` });
  const standin = await IsloStandin.start({ provider: local });
  const queue = `bench-islo-${randomBytes(4).toString("hex")}`;
  const env = {
    ...process.env,
    SANDQUEUE_ISLO_BASE_URL: standin.controlUrl,
    SANDQUEUE_ISLO_COMPUTE_URL: standin.computeUrl,
    SANDQUEUE_ISLO_API_KEY: standin.apiKey,
  };
  const config = parseWorkerConfig(env, {}, { queue, concurrency: 1, metricsPort: 0, logJobs: false, provider: "islo" });
  const runtime = await startWorkerRuntime(config, silentLogger);
  const client = new SandqueueClient({ redisUrl: config.redisUrl, queue, prefix: config.prefix });
  const minimal = new MinimalIslo(standin.controlUrl, standin.computeUrl, standin.apiKey);
  await minimal.login();
  const pending: Promise<unknown>[] = [];
  const viaSandqueue = async (i: number): Promise<void> => {
    const { id } = await client.enqueue({ kind: "python", code: CODE, files: { "in.txt": `job ${i}\n` } });
    const r = await client.waitForResult(id, { timeoutMs: 60_000 });
    if (r.status !== "succeeded" || r.stdout !== `job ${i}\n`) throw new Error(`sandqueue job ${i}: ${r.status} ${JSON.stringify(r.stdout)} ${r.error?.message ?? ""}`);
  };
  const sq: number[] = [];
  const mini: number[] = [];
  let sqWall = 0;
  let miniWall = 0;
  try {
    // Warm both paths (token exchange, connections, first bwrap).
    for (let i = 0; i < 3; i++) {
      await viaSandqueue(i);
      await minimal.job(i, pending);
    }
    await Promise.all(pending.splice(0));
    for (let i = 0; i < rounds; i++) {
      let t = performance.now();
      await viaSandqueue(i);
      sq.push(performance.now() - t);
      sqWall += sq[sq.length - 1]!;
      t = performance.now();
      await minimal.job(i, pending);
      mini.push(performance.now() - t);
      miniWall += mini[mini.length - 1]!;
      // Both paths' deletes done before the next round, so neither pays for the other's.
      await Promise.all(pending.splice(0));
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    await client.close();
    await runtime.close();
    await standin.stop();
    await local.close();
    for (const dir of local.cgroupParentDirs) await rmdir(dir).catch(() => undefined);
    await rm(workRoot, { recursive: true, force: true });
  }
  return { sandqueue: stats(sq, sqWall), minimal: stats(mini, miniWall) };
}

export function reportIsloBench(r: IsloBenchResult): string {
  return [
    "islo (stand-in), one python3 job with an inline file, concurrency 1:",
    `  through sandqueue (queue + worker + islo provider) ${fmt(r.sandqueue)}`,
    `  minimal islo client (create, files-archive, exec + polls) ${fmt(r.minimal)}`,
    `  p50 ratio sandqueue / minimal: ${(r.sandqueue.p50Ms / r.minimal.p50Ms).toFixed(2)} (target <= 1.1)`,
  ].join("\n");
}
