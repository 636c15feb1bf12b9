/**
 * `npm run bench [-- queue snapshot docker api egress islo remote]`: runs the selected benchmarks
 * (all by default) and prints each one's figures and ratios against a
 * baseline measured in the same run.
 */
import { reportDockerBench, runDockerBench } from "./docker.js";
import { runDockerQueueBench } from "./docker-queue.js";
import { reportApiBench, runApiBench } from "./api-bench.js";
import { reportQueueBench, runQueueBench } from "./queue-bench.js";
import { runSnapshotBench } from "./snapshot.js";
import { reportKubernetesBench, runKubernetesBench } from "./kubernetes-bench.js";
import { runEgressBench } from "./egress-bench.js";
import { reportRemoteBench, runRemoteBench } from "./remote-bench.js";
import { reportIsloBench, runIsloBench } from "./islo-bench.js";
import { fmt } from "./stats.js";
import { assertRedisReachable } from "../producer/redis.js";
import { parseWorkerConfig } from "../worker/config.js";

/**
 * The queue benchmarks start in-process workers, whose connections wait for
 * Redis forever: without this check a bench run with Redis down would hang
 * without a word.
 */
async function requireRedis(): Promise<void> {
  try {
    await assertRedisReachable(parseWorkerConfig(process.env, {}, {}).redisUrl);
  } catch (err) {
    console.error(`${(err as Error).message}; start it with: npm run setup`);
    process.exit(1);
  }
}

const BENCHES: Record<string, () => Promise<void>> = {
  queue: async () => {
    await requireRedis();
    console.log(reportQueueBench(await runQueueBench()));
  },
  snapshot: () => runSnapshotBench(),
  kubernetes: async () => {
    console.log(reportKubernetesBench(await runKubernetesBench()));
  },
  egress: () => runEgressBench(),
  remote: async () => {
    await requireRedis();
    console.log(reportRemoteBench(await runRemoteBench()));
  },
  islo: async () => {
    await requireRedis();
    console.log(reportIsloBench(await runIsloBench()));
  },
  api: async () => {
    await requireRedis();
    console.log(reportApiBench(await runApiBench()));
  },
  docker: async () => {
    await requireRedis();
    const direct = await runDockerBench();
    console.log(reportDockerBench(direct));
    const q = await runDockerQueueBench();
    console.log(`  through the queue, sequential   ${fmt(q.queued1)}`);
    console.log(`  through the queue, concurrency 2 ${fmt(q.queued2)}`);
    console.log(
      `  queued p50 / podman run p50 (sequential): ${(q.queued1.p50Ms / direct.podmanRun1.p50Ms).toFixed(2)} (target <= 0.33); ` +
        `queued throughput / podman run at concurrency 2: ${(q.queued2.perSec / direct.podmanRunN.perSec).toFixed(2)}x (target >= 3x)`,
    );
  },
};

const wanted = process.argv.slice(2);
for (const name of wanted.length ? wanted : Object.keys(BENCHES)) {
  const bench = BENCHES[name];
  if (!bench) {
    console.error(`unknown benchmark ${name}; known: ${Object.keys(BENCHES).join(", ")}`);
    process.exit(2);
  }
  console.log(`\n### ${name}`);
  await bench();
}
process.exit(0);
