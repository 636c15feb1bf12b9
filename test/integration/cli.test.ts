/**
 * The `sandqueue` command as a user runs it (the compiled CLI in dist/,
 * built by `npm test`), against a real worker and Redis.
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { REDIS_URL, freePort, requireCommand, startTestWorker, tempDir, testClient, uniqueQueue } from "../support/harness.js";

requireCommand("bwrap", "bubblewrap");
const BIN = join(import.meta.dirname, "../../bin/sandqueue.js");

describe("sandqueue CLI", () => {
  const queue = uniqueQueue("cli");
  const env = { ...process.env, REDIS_URL, SANDQUEUE_QUEUE: queue };
  let runtime: WorkerRuntime;
  // Asynchronous: the worker under test runs in this process's event loop.
  const cli = (...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> =>
    new Promise((resolve, reject) => {
      const child = spawn("node", [BIN, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      child.on("error", reject);
      child.on("close", (status) => resolve({ status, stdout, stderr }));
    });

  beforeAll(async () => {
    runtime = await startTestWorker(queue);
  });
  afterAll(async () => {
    await runtime?.close(0);
  });

  it("run: prints output and exits with the job's exit code", async () => {
    const r = await cli("run", "--shell", "echo hi; echo err >&2; exit 7");
    expect(r.status).toBe(7);
    expect(r.stdout).toBe("hi\n");
    expect(r.stderr).toContain("err\n");
    expect(r.stderr).toMatch(/job \S+ failed exit=7/);
  });

  it("run --json prints the result object on one line", async () => {
    const r = await cli("run", "--python", "import os; print(os.environ['GREETING'])", "--env", "GREETING=hello", "--json");
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ status: "succeeded", exitCode: 0, stdout: "hello\n", provider: "local" });
  });

  it("run: 124 on timeout, 125 on error, files from local paths", async () => {
    expect((await cli("run", "--shell", "sleep 5", "--timeout", "300ms")).status).toBe(124);
    const err = await cli("run", "--shell", "true", "--image", "no-such-image");
    expect(err.status).toBe(125);
    expect(err.stderr).toContain("SANDQ_ERR_IMAGE_NOT_FOUND");
    const dir = tempDir("cli");
    writeFileSync(join(dir, "in.txt"), "from the host\n");
    const f = await cli("run", "--shell", "cat data/in.txt", "--file", `data/in.txt=${join(dir, "in.txt")}`);
    expect(f.stdout).toBe("from the host\n");
  });

  it("run: a bad flag names the flag and enqueues nothing", async () => {
    const r = await cli("run", "--shell", "true", "--timeout", "soon");
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--timeout "soon": expected a duration');
    const both = await cli("run", "--shell", "true", "--python", "1");
    expect(both.status).toBe(2);
    expect(both.stderr).toContain("exactly one of --shell or --python");
  });

  it("batch: enqueues every line, writes one result per line in order, prints a summary", async () => {
    const dir = tempDir("batch");
    const file = join(dir, "jobs.jsonl");
    writeFileSync(
      file,
      [
        JSON.stringify({ kind: "shell", script: "echo one" }),
        JSON.stringify({ kind: "python", code: "print(2)" }),
        JSON.stringify({ kind: "shell", script: "exit 4" }),
        JSON.stringify({ kind: "shell", script: "sleep 5", limits: { timeoutMs: 200 } }),
      ].join("\n"),
    );
    const out = join(dir, "results.jsonl");
    const r = await cli("batch", file, "--out", out);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/4 jobs in [\d.]+s .*failed=1 succeeded=2 timed_out=1/);
    expect(r.stdout).toMatch(/latency p50=\d+ms p95=\d+ms/);
    const results = readFileSync(out, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { status: string; stdout: string });
    expect(results.map((x) => x.status)).toEqual(["succeeded", "succeeded", "failed", "timed_out"]);
    expect(results[0]!.stdout).toBe("one\n");
    expect(r.stderr).toContain("progress: 4/4 done");
  });

  it("batch: invalid lines are reported by number and nothing is enqueued", async () => {
    const client = testClient(queue);
    const before = await client.counts();
    const dir = tempDir("batch-bad");
    const file = join(dir, "jobs.jsonl");
    writeFileSync(file, [JSON.stringify({ kind: "shell", script: "true" }), "{oops", JSON.stringify({ kind: "shell", script: "x", limits: { memoryMb: 1 } })].join("\n"));
    const r = await cli("batch", file);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("jobs.jsonl:2: not valid JSON");
    expect(r.stderr).toContain("jobs.jsonl:3: invalid job spec: limits.memoryMb");
    expect(await client.counts()).toEqual(before);
    await client.close();
  });

  it("worker: a bad setting stops it with a message naming the variable", async () => {
    const r = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const child = spawn("node", [BIN, "worker"], { env: { ...env, SANDQUEUE_CONCURRENCY: "lots" }, stdio: ["ignore", "ignore", "pipe"] });
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      child.on("close", (status) => resolve({ status, stderr }));
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('SANDQUEUE_CONCURRENCY="lots": expected an integer from 1 to 1024');
  });

  it("demo: runs its mixed batch through a real worker, shows every status, and leaves nothing in Redis", async () => {
    const r = await cli("demo");
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const queue = /on queue (demo-[0-9a-f]+)/.exec(r.stdout)?.[1];
    expect(queue).toBeDefined();
    const row = (title: string) => r.stdout.split("\n").find((l) => l.startsWith(title)) ?? `(no row for ${title})`;
    expect(row("shell: hello + workspace file")).toMatch(/succeeded\s+exit=0 .*hello from sandbox/);
    expect(row("python: compute")).toMatch(/succeeded\s+exit=0 .*333332833333500000/);
    expect(row("python: read an input file")).toMatch(/succeeded\s+exit=0 .* 42$/);
    expect(row("shell: exits 3")).toMatch(/failed\s+exit=3 .*something went wrong/);
    expect(row("shell: sleeps past its 500ms limit")).toMatch(/timed_out/);
    expect(row("python: 400 MiB in a 64 MiB sandbox")).toMatch(/killed \(memory\)/);
    expect(row("shell: 40 processes, limit 16")).toMatch(/killed \(pids\)/);
    expect(row("shell: floods stdout")).toMatch(/killed \(output\)/);
    expect(row("python: tries the network")).toMatch(/succeeded\s+exit=0 .*no network:/);
    const redis = new Redis(REDIS_URL);
    try {
      expect(await redis.keys(`sandq:${queue}:*`)).toEqual([]);
    } finally {
      redis.disconnect();
    }
  });

  it("demo: with Redis down it stops at once and says why, without starting a worker", async () => {
    const port = await freePort();
    const t0 = Date.now();
    const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn("node", [BIN, "demo"], { env: { ...env, REDIS_URL: `redis://127.0.0.1:${port}` }, stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      child.on("close", (status) => resolve({ status, stdout, stderr }));
    });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(`SANDQ_ERR_REDIS_UNAVAILABLE: Redis at redis://127.0.0.1:${port} is unavailable`);
    expect(r.stderr).toContain("ECONNREFUSED");
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it("worker: runs jobs and exits 0 on SIGTERM", async () => {
    const q = uniqueQueue("cli-worker");
    const child = spawn("node", [BIN, "worker", "--concurrency", "1", "--queue", q, "--metrics-port", "0"], {
      env: { ...env, SANDQUEUE_WORK_DIR: tempDir("cliw") },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let logs = "";
    child.stderr.on("data", (d: Buffer) => (logs += d.toString()));
    const client = testClient(q);
    const { id } = await client.enqueue({ kind: "shell", script: "echo from-child-worker" });
    const result = await client.waitForResult(id, { timeoutMs: 30_000 });
    expect(result).toMatchObject({ status: "succeeded", stdout: "from-child-worker\n", worker: expect.stringContaining(`:${child.pid}`) });
    const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    expect(await exit).toBe(0);
    expect(logs).toContain('"event":"worker.started"');
    expect(logs).toContain('"event":"job.finished"');
    expect(logs).toContain('"event":"worker.closed"');
    await client.close();
  });
});
