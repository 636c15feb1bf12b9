/**
 * "A quiet worker": the docker provider's warm pool is full and no released
 * container is still being removed. Sequential latency is measured from that
 * state; throughput runs end only once it is reached again, so deferred
 * removals are paid inside the measured wall time.
 */
import type { DockerProvider } from "../providers/docker/index.js";
import { LABEL_WORKER, labelSafe } from "../providers/provider.js";
import { timedPool } from "./stats.js";

export async function dockerIdle(provider: DockerProvider, timeoutMs = 60_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  const filters = JSON.stringify({ label: [`${LABEL_WORKER}=${labelSafe(provider.owner)}`] });
  for (;;) {
    await provider.pool.waitReady(timeoutMs);
    const list = await provider.engine.json<unknown[]>({ method: "GET", path: "/containers/json", query: { all: true, filters } });
    if (list.length <= provider.pool.idleCount()) return;
    if (performance.now() > deadline) throw new Error(`docker provider not idle after ${timeoutMs} ms (${list.length} containers)`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Runs `fn` n times one after another, each after `between` (not timed). */
export async function pacedSequential(n: number, fn: () => Promise<void>, between: () => Promise<void>): Promise<number[]> {
  const latencies: number[] = [];
  for (let i = 0; i < n; i++) {
    await between();
    const s = performance.now();
    await fn();
    latencies.push(performance.now() - s);
  }
  return latencies;
}

/** timedPool, with the wall time running until `settle` (the deferred removals) has finished too. */
export async function timedUntilSettled(
  n: number,
  concurrency: number,
  fn: () => Promise<void>,
  settle: () => Promise<void>,
): Promise<{ latencies: number[]; wallMs: number }> {
  const t0 = performance.now();
  const { latencies } = await timedPool(n, concurrency, fn);
  await settle();
  return { latencies, wallMs: performance.now() - t0 };
}
