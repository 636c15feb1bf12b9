/**
 * Issue 5, end to end: the trivial python job through the queue (enqueue ->
 * worker on the docker provider with a warm pool -> result seen by the
 * producer). Sequential from a quiet worker (pool full, previous container
 * removed; the pause is not timed) and back to back, then back to back at
 * concurrency 2 with the wall time running until the last container is
 * removed. Printed next to bench/docker.ts's `podman run --rm` baseline from
 * the same run.
 */
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { SandqueueClient } from "../producer/client.js";
import { DockerProvider } from "../providers/docker/index.js";
import { parseWorkerConfig } from "../worker/config.js";
import { silentLogger } from "../worker/log.js";
import { startWorkerRuntime } from "../worker/runtime.js";
import { dockerIdle, pacedSequential, timedUntilSettled } from "./docker-idle.js";
import { fmt, stats, type RunStats } from "./stats.js";
import { dropQueue } from "../producer/drop-queue.js";

export interface DockerQueueBenchResult {
  /** Sequential, each job sent to a quiet worker. */
  queued1: RunStats;
  /** Sequential, back to back. */
  queued1BackToBack: RunStats;
  /** Concurrency 2, back to back. */
  queued2: RunStats;
}

export async function runDockerQueueBench(n = Number(process.env.BENCH_DOCKER_N ?? 40)): Promise<DockerQueueBenchResult> {
  const dockerHost = process.env.DOCKER_HOST ?? `unix://${join(process.cwd(), ".sandqueue/podman/podman.sock")}`;
  const image = process.env.SANDQUEUE_TEST_IMAGE ?? "sandqueue-python";
  const run = async <T>(concurrency: number, measure: (once: () => Promise<void>, quiet: () => Promise<void>) => Promise<T>): Promise<T> => {
    const queue = `bench-docker-${randomBytes(4).toString("hex")}`;
    const config = parseWorkerConfig(process.env, {}, {
      queue,
      provider: "docker",
      // As bench/docker.ts: two ready, four at most (docs/PERFORMANCE.md).
      providerSettings: { dockerHost, poolMinIdle: 2, poolMaxSize: 4 },
      concurrency,
      metricsPort: 0,
      logJobs: false,
    });
    // Built as worker/provider-factory.ts does, but kept here to see its pool.
    const provider = new DockerProvider({ dockerHost, owner: config.workerId, pool: { minIdle: 2, maxSize: 4 } });
    const runtime = await startWorkerRuntime(config, silentLogger, { provider });
    const client = new SandqueueClient({ redisUrl: config.redisUrl, queue, prefix: config.prefix });
    const job = { kind: "python", code: "pass", image, limits: { memoryMb: 256, pids: 64 } } as const;
    const once = async (): Promise<void> => {
      const r = await client.waitForResult((await client.enqueue(job)).id, { timeoutMs: 120_000 });
      if (r.status !== "succeeded") throw new Error(`bench job ended ${r.status}: ${JSON.stringify(r.error)}`);
    };
    const quiet = (): Promise<void> => dockerIdle(provider);
    try {
      for (let i = 0; i < 3; i++) await once(); // warm: image, pool key
      await quiet();
      return await measure(once, quiet);
    } finally {
      await client.close();
      await runtime.close();
      await provider.close();
      await dropQueue(config.redisUrl, queue, config.prefix);
    }
  };
  const sequential = await run(1, async (once, quiet) => {
    const paced = await pacedSequential(n, once, quiet);
    const backToBack = await timedUntilSettled(n, 1, once, quiet);
    return { queued1: stats(paced, paced.reduce((a, b) => a + b, 0)), queued1BackToBack: stats(backToBack.latencies, backToBack.wallMs) };
  });
  // bench/run.ts prints the paced sequential and the concurrency-2 rows.
  console.log(`  through the queue, sequential back to back ${fmt(sequential.queued1BackToBack)}`);
  const queued2 = await run(2, async (once, quiet) => {
    const r = await timedUntilSettled(n, 2, once, quiet);
    return stats(r.latencies, r.wallMs);
  });
  return { ...sequential, queued2 };
}
