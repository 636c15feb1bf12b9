/**
 * Issue 5, end to end: the trivial python job through the queue (enqueue ->
 * worker on the docker provider with a warm pool -> result seen by the
 * producer), at concurrency 1 and 2. Printed next to bench/docker.ts's
 * `podman run --rm` baseline from the same run.
 */
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { SandqueueClient } from "../producer/client.js";
import { parseWorkerConfig } from "../worker/config.js";
import { silentLogger } from "../worker/log.js";
import { startWorkerRuntime } from "../worker/runtime.js";
import { stats, timedPool, type RunStats } from "./stats.js";

export async function runDockerQueueBench(n = Number(process.env.BENCH_DOCKER_N ?? 40)): Promise<{ queued1: RunStats; queued2: RunStats }> {
  const dockerHost = process.env.DOCKER_HOST ?? `unix://${join(process.cwd(), ".sandqueue/podman/podman.sock")}`;
  const image = process.env.SANDQUEUE_TEST_IMAGE ?? "sandqueue-python";
  const run = async (concurrency: number): Promise<RunStats> => {
    const queue = `bench-docker-${randomBytes(4).toString("hex")}`;
    const config = parseWorkerConfig(process.env, {}, {
      queue,
      provider: "docker",
      dockerHost,
      concurrency,
      pool: { minIdle: concurrency, maxSize: concurrency * 2 },
      metricsPort: 0,
      logJobs: false,
    });
    const runtime = await startWorkerRuntime(config, silentLogger);
    const client = new SandqueueClient({ redisUrl: config.redisUrl, queue, prefix: config.prefix });
    const job = { kind: "python", code: "pass", image, limits: { memoryMb: 256, pids: 64 } } as const;
    const once = async (): Promise<void> => {
      const r = await client.waitForResult((await client.enqueue(job)).id, { timeoutMs: 120_000 });
      if (r.status !== "succeeded") throw new Error(`bench job ended ${r.status}: ${JSON.stringify(r.error)}`);
    };
    try {
      for (let i = 0; i < 3; i++) await once(); // warm: image, pool key
      await new Promise((r) => setTimeout(r, 1500)); // let the pool refill
      const res = await timedPool(n, concurrency, once);
      return stats(res.latencies, res.wallMs);
    } finally {
      await client.close();
      await runtime.close();
    }
  };
  return { queued1: await run(1), queued2: await run(2) };
}
