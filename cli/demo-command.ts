/**
 * `sandqueue demo [--serve]`: starts an in-process worker on the local
 * provider, runs a small mixed batch through the real queue (Redis) and real
 * sandboxes, and prints what happened to each job. `--serve` keeps the worker
 * running afterwards (with its metrics endpoint) until Ctrl-C.
 */
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { SandqueueClient } from "../producer/client.js";
import { assertRedisReachable } from "../producer/redis.js";
import { dropQueue } from "../producer/drop-queue.js";
import type { JobSpecInput } from "../producer/job-spec.js";
import type { JobResult } from "../producer/job-result.js";
import { parseWorkerConfig } from "../worker/config.js";
import { jsonLogger, silentLogger } from "../worker/log.js";
import { startWorkerRuntime } from "../worker/runtime.js";
import { runBatch } from "./batch-command.js";
import { formatSummary } from "./latency-summary.js";
import { DEFAULT_PROVIDER } from "../providers/registry.js";

export const DEMO_USAGE = "usage: sandqueue demo [--serve] [--verbose]";

export const DEMO_JOBS: { title: string; spec: JobSpecInput }[] = [
  { title: "shell: hello + workspace file", spec: { kind: "shell", script: 'echo "hello from $(hostname)"; echo data > out.txt; wc -c < out.txt' } },
  { title: "python: compute", spec: { kind: "python", code: "print(sum(i * i for i in range(10**6)))" } },
  {
    title: "python: read an input file",
    spec: { kind: "python", code: "import csv\nrows = list(csv.DictReader(open('input/data.csv')))\nprint(sum(int(r['n']) for r in rows))", files: { "input/data.csv": "name,n\na,1\nb,2\nc,39\n" } },
  },
  { title: "shell: exits 3", spec: { kind: "shell", script: "echo 'something went wrong' >&2; exit 3" } },
  { title: "shell: sleeps past its 500ms limit", spec: { kind: "shell", script: "sleep 30", limits: { timeoutMs: 500 } } },
  { title: "python: 400 MiB in a 64 MiB sandbox", spec: { kind: "python", code: "x = bytearray(400 * 1024 * 1024)\nprint(len(x))", limits: { memoryMb: 64 } } },
  { title: "shell: 40 processes, limit 16", spec: { kind: "shell", script: "for i in $(seq 40); do sleep 2 & done; wait", limits: { pids: 16 } } },
  { title: "shell: floods stdout", spec: { kind: "shell", script: "yes sandqueue", limits: { maxOutputBytes: 65536 } } },
  {
    title: "python: tries the network",
    spec: { kind: "python", code: "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('connected')\nexcept OSError as e:\n    print('no network:', e)" },
  },
];

export async function demoCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { serve: { type: "boolean" }, verbose: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${DEMO_USAGE}\n`);
    return 0;
  }
  // A queue of its own, so the demo never competes with workers already running.
  const queue = `demo-${randomBytes(4).toString("hex")}`;
  const config = parseWorkerConfig(env, {}, { queue, provider: DEFAULT_PROVIDER, logJobs: Boolean(values.verbose) });
  const log = values.verbose ? jsonLogger({ worker: config.workerId }) : silentLogger;
  // The in-process worker would wait for Redis forever: a demo fails at once instead.
  await assertRedisReachable(config.redisUrl);
  process.stdout.write(`sandqueue demo: worker ${config.workerId} on queue ${queue}, provider ${config.provider}, concurrency ${config.concurrency}\n`);
  const runtime = await startWorkerRuntime(config, log);
  const client = new SandqueueClient({ redisUrl: config.redisUrl, queue, prefix: config.prefix, resultTtlMs: 3600_000 });
  try {
    const { results, summary } = await runBatch(
      client,
      DEMO_JOBS.map((j) => j.spec),
      { waitMs: 120_000, progress: false },
    );
    DEMO_JOBS.forEach((job, i) => process.stdout.write(formatRow(job.title, results[i]!)));
    process.stdout.write(`\n${formatSummary(summary)}\n`);
    if (values.serve) {
      process.stdout.write(
        `\nworker keeps running on queue ${queue}; metrics at http://${config.metricsHost}:${config.metricsPort}/metrics (Ctrl-C to stop)\n`,
      );
      await new Promise<void>((resolve) => {
        process.once("SIGINT", resolve);
        process.once("SIGTERM", resolve);
      });
    }
    return results.some((r) => r.status === "error") ? 1 : 0;
  } finally {
    await client.close();
    await runtime.close();
    // The demo's queue is its own: nothing of it is left in Redis.
    await dropQueue(config.redisUrl, queue, config.prefix).catch(() => undefined);
  }
}

function formatRow(title: string, r: JobResult): string {
  const out = (r.stdout.trim() || r.stderr.trim()).split("\n")[0]?.slice(0, 60) ?? "";
  const status = r.reason ? `${r.status} (${r.reason})` : r.status;
  return `${title.padEnd(38)} ${status.padEnd(18)} exit=${String(r.exitCode ?? "-").padEnd(4)} ${String(Math.round(r.timings.totalMs)).padStart(6)}ms  ${out}\n`;
}
