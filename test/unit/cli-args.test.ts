import { describe, expect, it } from "vitest";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { inlineContent, parseDurationMs, parsePairs, readCapped, refuseEmpty } from "../../cli/args.js";
import { parseBatch } from "../../cli/batch-command.js";
import { queueFrom } from "../../cli/client-from-env.js";
import { tempDir } from "../support/harness.js";
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
  it("refuses one idempotencyKey on different specs, naming both lines; identical specs may share it", () => {
    const line = (script: string, key: string) => JSON.stringify({ kind: "shell", script, idempotencyKey: key });
    const text = [line("echo a", "k1"), "# comment", line("echo b", "k1"), line("echo c", "k2"), line("echo c", "k2")].join("\n");
    expect(() => parseBatch(text, "jobs.jsonl")).toThrow(
      'jobs.jsonl:3: idempotencyKey "k1" is also used by line 1 with a different spec (one key is one job: line 3 would get line 1\'s result)',
    );
    expect(() => parseBatch(text, "jobs.jsonl")).toThrow("1 invalid line(s); nothing was enqueued");
    expect(parseBatch([line("echo c", "k2"), line("echo c", "k2")].join("\n"), "f")).toHaveLength(2);
  });
  it("skips blank lines and comments", () => {
    expect(parseBatch('# a comment\n\n{"kind":"shell","script":"true"}\n', "f")).toHaveLength(1);
  });
});

describe("run and batch flags", () => {
  it("refuses a flag given as an empty string, naming it", () => {
    expect(() => refuseEmpty({ shell: "true", key: "" })).toThrow('--key "": expected a non-empty value');
    expect(() => refuseEmpty({ env: ["A=1", ""] })).toThrow('--env "": expected a non-empty value');
    expect(() => refuseEmpty({ shell: "true", json: true, key: undefined })).not.toThrow();
  });
  it("checks the queue name and says whether it came from --queue or SANDQUEUE_QUEUE", () => {
    expect(() => queueFrom({}, "")).toThrow('--queue "": expected a queue name: letters, digits and . _ -');
    expect(() => queueFrom({}, "a:b")).toThrow('--queue "a:b": expected a queue name');
    expect(() => queueFrom({ SANDQUEUE_QUEUE: "a:b" }, undefined)).toThrow('SANDQUEUE_QUEUE="a:b": expected a queue name');
    expect(queueFrom({ SANDQUEUE_QUEUE: "jobs" }, undefined)).toBe("jobs");
    expect(queueFrom({ SANDQUEUE_QUEUE: "a:b" }, "jobs-2")).toBe("jobs-2");
  });
  it("reads a file for --file up to the budget only, even an endless one", async () => {
    const t0 = Date.now();
    await expect(readCapped("file", "z=/dev/zero", "/dev/zero", 4 * 1024 * 1024, 16 * 1024 * 1024)).rejects.toThrow(
      "--file z=/dev/zero: /dev/zero holds more than the 4194304 bytes left of the 16777216-byte inline files limit",
    );
    expect(Date.now() - t0).toBeLessThan(5000);
    const dir = tempDir("cli-args");
    writeFileSync(join(dir, "five"), "12345");
    expect((await readCapped("file", "f", join(dir, "five"), 5, 5)).toString()).toBe("12345");
    await expect(readCapped("file", "f", join(dir, "five"), 4, 5)).rejects.toThrow("holds more than the 4 bytes left");
    await expect(readCapped("file", "f", join(dir, "missing"), 4, 5)).rejects.toThrow("cannot be read (ENOENT)");
    await expect(readCapped("file", "f", dir, 4, 5)).rejects.toThrow("is a directory");
  });
  it("keeps file bytes exact: UTF-8 as text (a BOM included), anything else as base64", () => {
    expect(inlineContent(Buffer.from("\ufeffhé\n"))).toBe("\ufeffhé\n");
    const bin = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x00, 0xff, 0xc3]);
    expect(inlineContent(bin)).toEqual({ base64: bin.toString("base64") });
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
