/**
 * `npm run bench -- remote`: what sandqueue adds per job on a remote sandbox
 * service. For each target (bench/remote-*.ts; `BENCH_REMOTE=microsandbox,provisioner`
 * picks some), the same trivial python job at concurrency 1, interleaved in
 * one run against one stand-in:
 *   - through sandqueue: enqueue -> a real worker (in-process, real Redis)
 *     on the provider -> result seen by the producer;
 *   - a minimal client: only the service's own calls (create, readiness
 *     where the service has one, run the command, delete), with fetch.
 * Timed until the output is in hand; the delete runs after, untimed, and
 * both wait for the service's list to be empty before the next job.
 * Target: sandqueue p50 <= 1.1x the minimal client's.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, rmdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { SandqueueClient } from "../producer/client.js";
import { dropQueue } from "../producer/drop-queue.js";
import { LocalProvider } from "../providers/local/index.js";
import { parseWorkerConfig } from "../worker/config.js";
import { silentLogger } from "../worker/log.js";
import { startWorkerRuntime } from "../worker/runtime.js";
import { fmt, stats, type RunStats } from "./stats.js";
import type { RemoteBenchTarget } from "./remote-target.js";
import type { RemoteStandinHandle } from "./remote-target.js";
import { BENCH_CODE } from "./remote-target.js";
import { microsandboxTarget } from "./remote-microsandbox.js";
import { provisionerTarget } from "./remote-provisioner.js";
import { superserveTarget } from "./remote-superserve.js";
import { isloTarget } from "./remote-islo.js";
import { e2bPoolTarget, e2bTarget } from "./remote-e2b.js";
import { northflankTarget } from "./remote-northflank.js";

/** Every target, in the order they run. Add one line per remote provider. */
export const REMOTE_TARGETS: RemoteBenchTarget[] = [microsandboxTarget, provisionerTarget, superserveTarget, isloTarget, e2bTarget, e2bPoolTarget, northflankTarget];

export interface RemoteBenchRow {
  provider: string;
  sandqueue: RunStats;
  minimal: RunStats;
}

async function drained(h: RemoteStandinHandle): Promise<void> {
  const end = Date.now() + 30_000;
  while ((await h.count()) > 0 || (h.atRest && !(await h.atRest()))) {
    if (Date.now() > end) throw new Error("the service still lists a sandbox (or refills its pool) 30 s after the job");
    await new Promise((r) => setTimeout(r, 5));
  }
}

export async function runRemoteBench(opts: { n?: number; warmup?: number; only?: string[] } = {}): Promise<RemoteBenchRow[]> {
  const n = opts.n ?? Number(process.env.BENCH_REMOTE_N ?? 40);
  const warmup = opts.warmup ?? 3;
  const only = opts.only ?? process.env.BENCH_REMOTE?.split(",").filter(Boolean);
  const rows: RemoteBenchRow[] = [];
  for (const target of REMOTE_TARGETS.filter((t) => !only || only.includes(t.name ?? t.provider))) {
    const name = target.name ?? target.provider;
    const dir = await mkdtemp(path.join(os.tmpdir(), "sandqueue-remote-bench-"));
    const local = new LocalProvider({ workRoot: dir, cgroupParent: `sandqueue-remote-bench-${process.pid}` });
    const h = await target.start(local);
    const queue = `bench-remote-${randomBytes(4).toString("hex")}`;
    const config = parseWorkerConfig({ ...process.env, ...h.env, ...target.workerEnv }, {}, { queue, provider: target.provider, concurrency: 1, metricsPort: 0, logJobs: false });
    const runtime = await startWorkerRuntime(config, silentLogger);
    const client = new SandqueueClient({ redisUrl: config.redisUrl, queue, prefix: config.prefix });
    try {
      const viaSandqueue: number[] = [];
      const viaMinimal: number[] = [];
      for (let i = 0; i < warmup + n; i++) {
        let t0 = performance.now();
        const r = await client.waitForResult((await client.enqueue({ kind: "python", code: BENCH_CODE })).id, { timeoutMs: 120_000 });
        const tq = performance.now() - t0;
        if (r.status !== "succeeded" || r.stdout !== "42\n") throw new Error(`${name}: bench job ended ${r.status}: ${JSON.stringify(r.error ?? r.stdout)}`);
        await drained(h);
        t0 = performance.now();
        const m = await h.minimalJob(i);
        const tm = performance.now() - t0;
        if (m.stdout !== "42\n" && m.stdout !== "42") throw new Error(`${name}: minimal client got ${JSON.stringify(m.stdout)}`);
        await m.deleted;
        await drained(h);
        if (i >= warmup) {
          viaSandqueue.push(tq);
          viaMinimal.push(tm);
        }
      }
      const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
      rows.push({ provider: name, sandqueue: stats(viaSandqueue, sum(viaSandqueue)), minimal: stats(viaMinimal, sum(viaMinimal)) });
    } finally {
      await client.close();
      await runtime.close();
      await dropQueue(config.redisUrl, queue, config.prefix);
      await h.stop();
      await local.close();
      for (const d of local.cgroupParentDirs) await rmdir(d).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  }
  return rows;
}

export function reportRemoteBench(rows: RemoteBenchRow[]): string {
  return rows
    .map((r) =>
      [
        `  ${r.provider}: minimal client (service calls only) ${fmt(r.minimal)}`,
        `  ${r.provider}: through sandqueue (queue + worker)   ${fmt(r.sandqueue)}`,
        `  ${r.provider}: p50 ratio ${(r.sandqueue.p50Ms / r.minimal.p50Ms).toFixed(2)}x (+${(r.sandqueue.p50Ms - r.minimal.p50Ms).toFixed(1)} ms; target <= 1.1x)`,
      ].join("\n"),
    )
    .join("\n");
}
