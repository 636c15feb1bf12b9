/**
 * The `sandqueue` command as a user runs it (the compiled CLI in dist/,
 * built by `npm test`), against a real worker and Redis.
 */
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
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
  const cli = (...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> => cliWith(env, "node", [BIN, ...args]);
  const cliWith = (
    childEnv: NodeJS.ProcessEnv,
    command: string,
    args: string[],
  ): Promise<{ status: number | null; stdout: string; stderr: string }> =>
    new Promise((resolve, reject) => {
      const child = spawn(command, args, { env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
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

  /** Runs the CLI on a queue no worker serves, then says what reached Redis under that queue (nothing, if all went well). */
  const refused = async (...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string; keys: string[] }> => {
    const q = uniqueQueue("cli-refused");
    const r = await cliWith({ ...env, SANDQUEUE_QUEUE: q }, "node", [BIN, ...args]);
    const redis = new Redis(REDIS_URL);
    try {
      return { ...r, keys: await redis.keys(`sandq:${q}:*`) };
    } finally {
      redis.disconnect();
    }
  };

  it("run: every flag is checked before anything is enqueued", async () => {
    const wait = await refused("run", "--shell", "true", "--wait", "0");
    expect(wait.status).toBe(2);
    expect(wait.stderr).toContain('--wait "0": expected a duration of at least 1ms');
    expect(wait.keys).toEqual([]);
    const key = await refused("run", "--shell", "true", "--key", "");
    expect(key.status).toBe(2);
    expect(key.stderr).toContain('--key "": expected a non-empty value');
    expect(key.keys).toEqual([]);
    const image = await refused("run", "--shell", "true", "--image", "x/./y");
    expect(image.status).toBe(2);
    expect(image.stderr).toContain("SANDQ_ERR_SPEC_INVALID: invalid job spec: image: expected an image name");
    expect(image.keys).toEqual([]);
  });

  it("run: a bad --queue names the flag, without a stack trace", async () => {
    for (const q of ["", "a:b"]) {
      const r = await cli("run", "--shell", "true", "--queue", q);
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toContain(`--queue ${JSON.stringify(q)}`);
      expect(r.stderr).not.toMatch(/^\s+at /m);
    }
    const fromEnv = await cliWith({ ...env, SANDQUEUE_QUEUE: "a:b" }, "node", [BIN, "run", "--shell", "true"]);
    expect(fromEnv.status).toBe(2);
    expect(fromEnv.stderr).toContain('SANDQUEUE_QUEUE="a:b": expected a queue name: letters, digits and . _ -');
  });

  it("every command prints its usage for --help and exits 0", async () => {
    for (const command of ["run", "batch", "worker", "demo", "snapshot", "image", "providers"]) {
      const r = await cli(command, "--help");
      expect(r.status, `${command}: ${r.stderr}`).toBe(0);
      expect(r.stdout, command).toMatch(new RegExp(`^usage:\\s+sandqueue ${command}`));
    }
    const unknown = await cli("run", "--shell", "true", "--bogus");
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain("sandqueue run --help shows the usage");
  });

  it("run --file carries a binary file's exact bytes", async () => {
    const dir = tempDir("cli-bin");
    const bytes = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 0xff, 0xfe, 0xc3, 0x28]), randomBytes(64 * 1024)]);
    writeFileSync(join(dir, "blob.bin"), bytes);
    const r = await cli("run", "--shell", "sha256sum data/blob.bin; wc -c < data/blob.bin", "--file", `data/blob.bin=${join(dir, "blob.bin")}`);
    expect(r.stderr).not.toContain("error=");
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`${createHash("sha256").update(bytes).digest("hex")}  data/blob.bin\n${bytes.length}\n`);
  });

  it("run --file stops reading an endless file at the inline files limit, in little memory", async () => {
    // GNU time reports the CLI process's peak RSS (KiB) on the last stderr line.
    const t0 = Date.now();
    const r = await cliWith({ ...env, SANDQUEUE_QUEUE: uniqueQueue("cli-zero") }, "/usr/bin/time", ["-f", "%M", "node", BIN, "run", "--shell", "true", "--file", "z=/dev/zero"]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("--file z=/dev/zero: /dev/zero holds more than the 16777215 bytes left of the 16777216-byte inline files limit");
    const peakKiB = Number(r.stderr.trim().split("\n").at(-1));
    expect(peakKiB).toBeGreaterThan(0);
    expect(peakKiB).toBeLessThan(200 * 1024);
    expect(Date.now() - t0).toBeLessThan(15_000);
  });

  it("run: a files path the host cannot hold is refused at enqueue, naming the key", async () => {
    const dir = tempDir("cli-long");
    writeFileSync(join(dir, "f"), "x");
    const long = `${"d".repeat(200)}/${"n".repeat(256)}`;
    const r = await refused("run", "--shell", "true", "--file", `${long}=${join(dir, "f")}`);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`files["${"d".repeat(75)}`);
    expect(r.stderr).toContain("has a segment of 256 bytes; a file or directory name is at most 255 bytes");
    expect(r.keys).toEqual([]);
  });

  it("batch: one idempotencyKey on two different specs is refused, naming both lines; nothing is enqueued", async () => {
    const dir = tempDir("batch-dup");
    const file = join(dir, "jobs.jsonl");
    const key = `dup-${Date.now()}`;
    writeFileSync(
      file,
      [
        JSON.stringify({ kind: "shell", script: "echo first", idempotencyKey: key }),
        JSON.stringify({ kind: "shell", script: "echo other" }),
        JSON.stringify({ kind: "shell", script: "echo second", idempotencyKey: key }),
      ].join("\n"),
    );
    const r = await refused("batch", file);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`jobs.jsonl:3: idempotencyKey "${key}" is also used by line 1 with a different spec`);
    expect(r.keys).toEqual([]);
  });

  it("batch: the same spec twice under one key runs once and both lines get its result", async () => {
    const dir = tempDir("batch-same");
    const file = join(dir, "jobs.jsonl");
    const line = JSON.stringify({ kind: "shell", script: "echo $$", idempotencyKey: `same-${Date.now()}` });
    writeFileSync(file, `${line}\n${line}\n`);
    const out = join(dir, "results.jsonl");
    const r = await cli("batch", file, "--out", out);
    expect(r.status).toBe(0);
    const [a, b] = readFileSync(out, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { id: string; stdout: string });
    expect(a!.id).toBe(b!.id);
    expect(a!.stdout).toBe(b!.stdout);
  });

  it("batch: hostile specs are refused by line with the field and the reason; nothing is enqueued", async () => {
    const dir = tempDir("batch-hostile");
    const file = join(dir, "jobs.jsonl");
    writeFileSync(
      file,
      [
        '{"kind":"shell","script":"echo a\\u0000b"}',
        '{"kind":"shell","script":"true","env":{"__proto__":"x"}}',
        '{"kind":"shell","script":"true","files":{"x":"1","./x":"2"}}',
        '{"kind":"shell","script":"true","files":{"a":"1","a/b":"2"}}',
        '{"kind":"shell","script":"true","files":{"../a":"1"}}',
        '{"kind":"bash","script":"true"}',
      ].join("\n"),
    );
    const r = await refused("batch", file, "--out", join(dir, "out.jsonl"));
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("6 invalid line(s); nothing was enqueued");
    expect(r.stderr).toContain("jobs.jsonl:1: invalid job spec: script: expected text without NUL bytes");
    expect(r.stderr).toContain('jobs.jsonl:2: invalid job spec: env["__proto__"]: "__proto__" is not accepted as a key');
    expect(r.stderr).toContain('jobs.jsonl:3: invalid job spec: files["./x"]: names the same file as files["x"]');
    expect(r.stderr).toContain('jobs.jsonl:4: invalid job spec: files["a/b"]: needs "a" to be a directory, but files["a"] is a file');
    expect(r.stderr).toContain("jobs.jsonl:5: invalid job spec: files[\"../a\"]: expected a relative path inside the workspace (this one contains '..')");
    expect(r.stderr).toContain('jobs.jsonl:6: invalid job spec: kind: expected "shell" or "python" (got "bash")');
    expect(r.keys).toEqual([]);
  });

  it("batch: an --out that cannot be written is refused before anything is enqueued", async () => {
    const dir = tempDir("batch-out");
    const file = join(dir, "jobs.jsonl");
    writeFileSync(file, JSON.stringify({ kind: "shell", script: "true" }));
    const r = await refused("batch", file, "--out", join(dir, "no-such-dir", "out.jsonl"));
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("cannot be written (ENOENT)");
    expect(r.keys).toEqual([]);
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
