/**
 * The whole path of a job, for real: producer -> Redis (BullMQ) -> worker ->
 * bubblewrap sandbox -> result. Every status, validation, idempotency,
 * isolation, cancel.
 */
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes, SpecError } from "../../errors/index.js";
import type { SandqueueClient } from "../../producer/client.js";
import type { JobResult } from "../../producer/job-result.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { requireCommand, startTestWorker, testClient, uniqueQueue } from "../support/harness.js";

requireCommand("bwrap", "bubblewrap");
requireCommand("redis-server", "redis-server");

describe("runner end to end (local provider)", () => {
  const queue = uniqueQueue("runner");
  let runtime: WorkerRuntime;
  let client: SandqueueClient;
  const CANARY = `canary-${Date.now()}`;

  beforeAll(async () => {
    process.env.SANDQ_TEST_CANARY = CANARY; // in the worker's own environment
    runtime = await startTestWorker(queue);
    client = testClient(queue);
  });
  afterAll(async () => {
    delete process.env.SANDQ_TEST_CANARY;
    await client?.close();
    await runtime?.close(1000);
  });

  async function run(spec: Record<string, unknown>): Promise<JobResult> {
    const { id } = await client.enqueue(spec);
    return client.waitForResult(id, { timeoutMs: 30_000 });
  }

  it("runs shell and python jobs and reports each status", async () => {
    const specs = [
      { kind: "shell", script: "echo hi >out.txt; cat out.txt" },
      { kind: "python", code: "print(6*7)" },
      { kind: "shell", script: "echo oops >&2; exit 3" },
      { kind: "shell", script: "sleep 30", limits: { timeoutMs: 500 } },
      { kind: "python", code: "x = bytearray(300 * 1024 * 1024)\nprint(len(x))", limits: { memoryMb: 64 } },
      { kind: "shell", script: "for i in $(seq 40); do sleep 1 & done; wait", limits: { pids: 12 } },
      { kind: "shell", script: "yes sandqueue", limits: { maxOutputBytes: 10_000 } },
    ];
    const ids = (await client.enqueueMany(specs)).map((j) => j.id);
    const [ok, py, fail, slow, mem, pids, flood] = await Promise.all(ids.map((id) => client.waitForResult(id, { timeoutMs: 30_000 })));

    expect(ok).toMatchObject({ status: "succeeded", exitCode: 0, stdout: "hi\n", stderr: "", reason: null, provider: "local", image: "host", error: null });
    expect(ok!.timings.totalMs).toBeGreaterThanOrEqual(ok!.timings.execMs);
    expect(py).toMatchObject({ status: "succeeded", stdout: "42\n" });
    expect(fail).toMatchObject({ status: "failed", exitCode: 3, stderr: "oops\n" });
    expect(slow).toMatchObject({ status: "timed_out" });
    expect(slow!.timings.execMs).toBeLessThan(5000);
    expect(mem).toMatchObject({ status: "killed", reason: "memory" });
    expect(pids).toMatchObject({ status: "killed", reason: "pids" });
    expect(flood).toMatchObject({ status: "killed", reason: "output", stdoutTruncated: true });
    expect(Buffer.byteLength(flood!.stdout)).toBeLessThanOrEqual(10_000);
  });

  it("ends an unknown image as error without retrying", async () => {
    const r = await run({ kind: "shell", script: "true", image: "no-such-image" });
    expect(r.status).toBe("error");
    expect(r.error?.code).toBe(ErrorCodes.IMAGE_NOT_FOUND);
    expect(r.error?.message).toContain("no-such-image");
    expect(r.attempts).toBe(1);
  });

  it("refuses limits above the worker maximum as error, not retried", async () => {
    const r = await run({ kind: "shell", script: "true", limits: { memoryMb: 1024 * 1024 } });
    expect(r).toMatchObject({ status: "error", attempts: 1 });
    expect(r.error?.code).toBe(ErrorCodes.LIMIT_ABOVE_MAX);
  });

  it("rejects invalid specs before anything is enqueued", async () => {
    const before = await client.counts();
    await expect(client.enqueue({ kind: "shell", script: "x", limits: { timeoutMs: -1 } })).rejects.toThrow(SpecError);
    await expect(client.enqueueMany([{ kind: "shell", script: "true" }, { kind: "perl", code: "1" }])).rejects.toThrow(
      /1 of 2 job specs are invalid; nothing was enqueued:\n\[1\]/,
    );
    const after = await client.counts();
    expect(after).toEqual(before);
  });

  it("refuses different specs under one idempotency key in one enqueueMany, and queue names workers refuse", async () => {
    const before = await client.counts();
    const key = `conflict-${Date.now()}`;
    await expect(
      client.enqueueMany([
        { kind: "shell", script: "echo a", idempotencyKey: key },
        { kind: "shell", script: "echo b", idempotencyKey: key },
      ]),
    ).rejects.toThrow(`1 of 2 job specs are invalid; nothing was enqueued:\n[1] idempotencyKey "${key}" is also used by [0] with a different spec`);
    expect(await client.counts()).toEqual(before);
    for (const queue of ["", "a:b", "has space"]) {
      expect(() => testClient(queue)).toThrow(expect.objectContaining({ code: ErrorCodes.CONFIG_INVALID, message: expect.stringContaining(`queue ${JSON.stringify(queue)}: expected a queue name`) }));
    }
  });

  it("runs a job once per idempotency key", async () => {
    const spec = { kind: "shell", script: "echo once", idempotencyKey: `key-${Date.now()}` };
    const a = await client.enqueue(spec);
    const b = await client.enqueue(spec);
    expect(b.id).toBe(a.id);
    const r1 = await client.waitForResult(a.id, { timeoutMs: 20_000 });
    const c = await client.enqueue(spec);
    expect(c.id).toBe(a.id);
    const r2 = await client.waitForResult(c.id, { timeoutMs: 20_000 });
    expect(r2).toEqual(r1);
    // A client that did not exist when the job finished finds its result too.
    const late = testClient(queue);
    try {
      expect(await late.waitForResult(a.id, { timeoutMs: 5_000 })).toEqual(r1);
    } finally {
      await late.close();
    }
  });

  it("isolates the job: no worker env, no network, no writes outside /workspace and /tmp, no host processes", async () => {
    const marker = `/tmp/sandq-escape-${Date.now()}`;
    const r = await run({
      kind: "shell",
      env: { VISIBLE: "yes" },
      script: [
        "env",
        "echo net: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')",
        "echo procs: $(ls /proc | grep -c '^[0-9]')",
        "touch /usr/x 2>/dev/null && echo wrote-usr",
        "touch /etc/x 2>/dev/null && echo wrote-etc",
        "touch / 2>/dev/null; mkdir /newdir 2>/dev/null && echo wrote-root",
        `touch ${marker} && echo wrote-tmp`,
        "touch /workspace/ok && echo wrote-workspace",
        "id -u",
      ].join("\n"),
    });
    expect(r.stdout).toContain("VISIBLE=yes");
    expect(r.stdout).not.toContain(CANARY);
    expect(r.stdout).not.toContain("SANDQ_TEST_CANARY");
    expect(r.stdout).toMatch(/^net: lo$/m);
    const procs = Number(/procs: (\d+)/.exec(r.stdout)?.[1]);
    expect(procs).toBeGreaterThan(0);
    expect(procs).toBeLessThan(8); // sh, ls, grep and bwrap's init: no host processes
    expect(r.stdout).not.toMatch(/wrote-(usr|etc|root)/);
    expect(r.stdout).toContain("wrote-tmp");
    expect(r.stdout).toContain("wrote-workspace");
    expect(existsSync(marker)).toBe(false); // the sandbox's /tmp is private
    expect(r.stdout.trim().split("\n").at(-1)).not.toBe("0");
  });

  it("cannot reach the network, not even Redis on the host's loopback", async () => {
    const r = await run({
      kind: "python",
      code: [
        "import socket",
        "for host, port in [('127.0.0.1', 6379), ('1.1.1.1', 53)]:",
        "    try:",
        "        socket.create_connection((host, port), timeout=2); print('connected', host)",
        "    except OSError as e:",
        "        print('refused', host)",
      ].join("\n"),
    });
    expect(r.status).toBe("succeeded");
    expect(r.stdout).toBe("refused 127.0.0.1\nrefused 1.1.1.1\n");
  });

  it("passes inline files into the workspace", async () => {
    const r = await run({ kind: "python", code: "print(open('input/data.csv').read().strip())", files: { "input/data.csv": "a,b\n1,2\n" } });
    expect(r).toMatchObject({ status: "succeeded", stdout: "a,b\n1,2\n" });
  });

  it("cancels a running job (killed, reason cancelled) and a waiting one", async () => {
    const { id } = await client.enqueue({ kind: "shell", script: "sleep 30", limits: { timeoutMs: 60_000 } });
    const deadline = Date.now() + 10_000;
    while (runtime.worker.activeJobs === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 200));
    expect(await client.cancel(id)).toBe(true);
    const r = await client.waitForResult(id, { timeoutMs: 10_000 });
    expect(r).toMatchObject({ status: "killed", reason: "cancelled" });
    expect(r.timings.execMs).toBeLessThan(10_000);
    expect(await client.cancel(id)).toBe(false); // already finished
  });

  it("times out waiting with a clear error", async () => {
    const { id } = await client.enqueue({ kind: "shell", script: "sleep 2" });
    await expect(client.waitForResult(id, { timeoutMs: 100 })).rejects.toMatchObject({ code: ErrorCodes.RESULT_TIMEOUT });
    await expect(client.getResult("no-such-job")).rejects.toMatchObject({ code: ErrorCodes.JOB_NOT_FOUND });
    await expect(client.waitForResult("no-such-job", { timeoutMs: 20_000 })).rejects.toMatchObject({ code: ErrorCodes.JOB_NOT_FOUND });
    await client.waitForResult(id, { timeoutMs: 20_000 });
  });
});
