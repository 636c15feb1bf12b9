/** Batch summaries: counts per status and latency percentiles. */
import type { JobResult } from "../producer/job-result.js";

/** Nearest-rank percentile of an ascending-sorted array. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))] ?? 0;
}

export interface BatchSummary {
  total: number;
  byStatus: Record<string, number>;
  p50Ms: number;
  p95Ms: number;
  wallMs: number;
}

export function summarize(results: JobResult[], wallMs: number): BatchSummary {
  const byStatus: Record<string, number> = {};
  for (const r of results) byStatus[r.status] = (byStatus[r.status] ?? 0) + 1;
  const lat = results.map((r) => r.timings.totalMs).sort((a, b) => a - b);
  return { total: results.length, byStatus, p50Ms: percentile(lat, 50), p95Ms: percentile(lat, 95), wallMs };
}

export function formatSummary(s: BatchSummary): string {
  const statuses = Object.entries(s.byStatus)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
  const rate = s.wallMs > 0 ? ((s.total * 1000) / s.wallMs).toFixed(1) : "-";
  return `${s.total} jobs in ${(s.wallMs / 1000).toFixed(2)}s (${rate}/s): ${statuses}\nlatency p50=${s.p50Ms.toFixed(0)}ms p95=${s.p95Ms.toFixed(0)}ms`;
}
