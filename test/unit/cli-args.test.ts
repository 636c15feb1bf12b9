import { describe, expect, it } from "vitest";
import { parseDurationMs, parsePairs } from "../../cli/args.js";
import { parseBatch } from "../../cli/batch-command.js";
import { percentile, summarize } from "../../cli/latency-summary.js";
import { exitStatusFor, type JobResult } from "../../producer/job-result.js";

describe("cli values", () => {
  it("parses durations with units", () => {
    expect(parseDurationMs("timeout", "10s")).toBe(10_000);
    expect(parseDurationMs("timeout", "250ms")).toBe(250);
    expect(parseDurationMs("timeout", "2m")).toBe(120_000);
    expect(parseDurationMs("timeout", "3")).toBe(3000);
    expect(() => parseDurationMs("timeout", "soon")).toThrow(/--timeout "soon": expected a duration/);
  });
  it("parses K=V pairs, keeping '=' in values", () => {
    expect(parsePairs("env", ["A=1", "B=x=y"])).toEqual({ A: "1", B: "x=y" });
    expect(() => parsePairs("env", ["=1"])).toThrow(/--env "=1": expected KEY=VALUE/);
  });
});

describe("batch files", () => {
  it("reports every invalid line with its number and accepts none", () => {
    const text = ['{"kind":"shell","script":"true"}', "not json", '{"kind":"python"}', "", '{"kind":"shell","script":"x","limits":{"pids":0}}'].join("\n");
    try {
      parseBatch(text, "jobs.jsonl");
      throw new Error("expected rejection");
    } catch (err) {
      const msg = (err as Error).message;
      expect(msg).toContain("3 invalid line(s); nothing was enqueued");
      expect(msg).toContain("jobs.jsonl:2: not valid JSON");
      expect(msg).toContain("jobs.jsonl:3: invalid job spec: code:");
      expect(msg).toContain("jobs.jsonl:5: invalid job spec: limits.pids");
    }
  });
  it("skips blank lines and comments", () => {
    expect(parseBatch('# a comment\n\n{"kind":"shell","script":"true"}\n', "f")).toHaveLength(1);
  });
});

describe("summaries and exit codes", () => {
  const r = (status: JobResult["status"], totalMs: number, exitCode: number | null = 0): JobResult => ({
    id: "x", status, exitCode, signal: null, stdout: "", stderr: "", stdoutTruncated: false, stderrTruncated: false,
    reason: null, timings: { queuedMs: 0, acquireMs: 0, execMs: 0, totalMs }, provider: "local", image: "host",
    worker: "w", attempts: 1, snapshot: null, error: null,
  });
  it("computes nearest-rank percentiles", () => {
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(xs, 50)).toBe(50);
    expect(percentile(xs, 95)).toBe(95);
    expect(percentile([], 50)).toBe(0);
  });
  it("counts statuses", () => {
    const s = summarize([r("succeeded", 5), r("failed", 7, 3), r("succeeded", 9)], 100);
    expect(s.byStatus).toEqual({ succeeded: 2, failed: 1 });
    expect(s.p50Ms).toBe(7);
  });
  it("maps results to CLI exit statuses", () => {
    expect(exitStatusFor(r("succeeded", 1))).toBe(0);
    expect(exitStatusFor(r("failed", 1, 3))).toBe(3);
    expect(exitStatusFor(r("timed_out", 1, null))).toBe(124);
    expect(exitStatusFor(r("error", 1, null))).toBe(125);
  });
});
