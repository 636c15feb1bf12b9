/**
 * Issue 5 benchmark: a trivial python job (`python3 -c pass`) through the
 * docker provider with a warm pool (acquire -> exec; release in the
 * background, as the worker does), against `podman run --rm IMAGE python3 -c
 * pass` in the same run: sequential from a quiet provider, and back to back
 * at concurrency 2. Needs the engine and image of scripts/setup.d/podman.sh.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { DockerProvider } from "../providers/docker/index.js";
import type { SandboxSpec } from "../providers/provider.js";
import { dockerIdle, pacedSequential, timedUntilSettled } from "./docker-idle.js";
import { fmt, stats, timedPool, type RunStats } from "./stats.js";

export interface DockerBenchOptions {
  n?: number;
  concurrency?: number;
  image?: string;
  dockerHost?: string;
  pool?: { minIdle: number; maxSize: number; fillConcurrency?: number };
}

export interface DockerBenchResult {
  image: string;
  concurrency: number;
  pool: { minIdle: number; maxSize: number; fillConcurrency?: number };
  podmanRun1: RunStats;
  podmanRunN: RunStats;
  provider1: RunStats;
  providerN: RunStats;
  /** How many acquires the warm pool served, ready or still being created (of all provider jobs). */
  poolHits: number;
  poolWaits: number;
  poolMisses: number;
}

const ROOT = process.cwd();

function podmanEnv(): NodeJS.ProcessEnv {
  const conf = join(ROOT, ".sandqueue/podman/containers.conf");
  // The CLI needs the same runtime/ulimit settings as the service.
  return process.env.CONTAINERS_CONF || !existsSync(conf) ? process.env : { ...process.env, CONTAINERS_CONF: conf };
}

function podmanRun(image: string): Promise<void> {
  return new Promise((resolve, reject) => {
    // --network none: same as the provider's sandboxes, and no netavark setup.
    const child = spawn("podman", ["run", "--rm", "--network", "none", image, "python3", "-c", "pass"], {
      stdio: ["ignore", "pipe", "pipe"],
      env: podmanEnv(),
    });
    let err = "";
    child.stdout.resume();
    child.stderr.on("data", (b: Buffer) => (err += b.toString()));
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve() : reject(new Error(`podman run exited ${code}: ${err.trim()}`))));
  });
}

export async function runDockerBench(opts: DockerBenchOptions = {}): Promise<DockerBenchResult> {
  const n = opts.n ?? Number(process.env.BENCH_DOCKER_N ?? 40);
  const concurrency = opts.concurrency ?? 2;
  const image = opts.image ?? process.env.SANDQUEUE_TEST_IMAGE ?? "sandqueue-python";
  const dockerHost = opts.dockerHost ?? process.env.DOCKER_HOST ?? `unix://${join(ROOT, ".sandqueue/podman/podman.sock")}`;
  const pool = opts.pool ?? { minIdle: 2, maxSize: 4 };
  const provider = new DockerProvider({ dockerHost, owner: `bench-${process.pid}`, pool });
  const spec: SandboxSpec = { image, limits: { memoryMb: 256, pids: 64 }, network: "none", labels: {}, annotations: {}, maxLifetimeMs: 600_000 };
  // As in the worker: the result is ready when the exec ends; the container
  // is removed in the background (awaited before the run's wall time ends).
  const releases = new Set<Promise<void>>();
  const job = async (): Promise<void> => {
    const box = await provider.acquire(spec, {});
    try {
      const r = await box.exec({ argv: ["python3", "-c", "pass"], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 30_000, maxOutputBytes: 65536 });
      if (r.exitCode !== 0) throw new Error(`job failed: ${r.exitCode} ${r.stderr.toString()}`);
    } finally {
      const p = box.release();
      releases.add(p);
      void p.finally(() => releases.delete(p));
    }
  };
  const quiet = async (): Promise<void> => {
    await Promise.all([...releases]);
    await dockerIdle(provider);
  };
  try {
    await provider.check();
    // Warm-up: page cache, image layers, the pool's key.
    await job();
    await podmanRun(image);
    await quiet();
    const hits0 = provider.pool.hits;
    const misses0 = provider.pool.misses;
    const waits0 = provider.pool.waits;

    // Interleaved so machine noise hits both sides alike.
    const podman1 = await timedPool(Math.ceil(n / 2), 1, () => podmanRun(image));
    // Sequential latency as on a quiet worker: each job starts with the pool
    // full and the previous container removed (the pause is not timed).
    const prov1 = await pacedSequential(n, job, quiet);
    const prov1Wall = prov1.reduce((a, b) => a + b, 0);
    const podmanN = await timedPool(n, concurrency, () => podmanRun(image));
    await quiet();
    // Throughput back to back; the wall time includes the last removals.
    const provN = await timedUntilSettled(n, concurrency, job, quiet);
    return {
      image,
      concurrency,
      pool,
      podmanRun1: stats(podman1.latencies, podman1.wallMs),
      podmanRunN: stats(podmanN.latencies, podmanN.wallMs),
      provider1: stats(prov1, prov1Wall),
      providerN: stats(provN.latencies, provN.wallMs),
      poolHits: provider.pool.hits - hits0,
      poolMisses: provider.pool.misses - misses0,
      poolWaits: provider.pool.waits - waits0,
    };
  } finally {
    await provider.close();
  }
}

export function reportDockerBench(r: DockerBenchResult): string {
  const ratio = (a: number, b: number): string => (a / b).toFixed(2);
  return [
    `docker provider bench (image ${r.image}, pool minIdle=${r.pool.minIdle} maxSize=${r.pool.maxSize} fillConcurrency=${r.pool.fillConcurrency ?? "default"}; sequential rows of the provider start from a quiet provider, their /s is 1/mean latency)`,
    `  podman run --rm, sequential     ${fmt(r.podmanRun1)}`,
    `  provider + pool, sequential     ${fmt(r.provider1)}`,
    `  podman run --rm, concurrency ${r.concurrency}  ${fmt(r.podmanRunN)}`,
    `  provider + pool, concurrency ${r.concurrency}  ${fmt(r.providerN)}`,
    `  pool: ready ${r.poolHits}, waited for one being created ${r.poolWaits}, created by the acquire ${r.poolMisses}`,
    `  p50 provider/podman-run: sequential ${ratio(r.provider1.p50Ms, r.podmanRun1.p50Ms)}, concurrency ${r.concurrency} ${ratio(r.providerN.p50Ms, r.podmanRunN.p50Ms)} (target <= 0.33)`,
    `  throughput provider/podman-run at concurrency ${r.concurrency}: ${ratio(r.providerN.perSec, r.podmanRunN.perSec)}x (target >= 3x)`,
  ].join("\n");
}
