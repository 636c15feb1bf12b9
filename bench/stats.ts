/** Small statistics helpers for benchmarks. */
export function quantile(values: number[], q: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil(q * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

export interface RunStats {
  n: number;
  p50Ms: number;
  p99Ms: number;
  perSec: number;
}

export function stats(latenciesMs: number[], wallMs: number): RunStats {
  return {
    n: latenciesMs.length,
    p50Ms: quantile(latenciesMs, 0.5),
    p99Ms: quantile(latenciesMs, 0.99),
    perSec: (latenciesMs.length * 1000) / wallMs,
  };
}

export function fmt(s: RunStats): string {
  return `${s.perSec.toFixed(1).padStart(7)}/s  p50 ${s.p50Ms.toFixed(2).padStart(7)}ms  p99 ${s.p99Ms.toFixed(2).padStart(7)}ms  (n=${s.n})`;
}

/** Runs `fn` n times with `concurrency` in flight; returns per-call latencies and wall time. */
export async function timedPool(n: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<{ latencies: number[]; wallMs: number }> {
  const latencies: number[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        const i = next++;
        const s = performance.now();
        await fn(i);
        latencies.push(performance.now() - s);
      }
    }),
  );
  return { latencies, wallMs: performance.now() - t0 };
}
