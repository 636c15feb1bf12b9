/**
 * Workspaces and secrets through the whole pipeline: snapshots chained across
 * two workers, excludes, workspace limits, hostile archives from outside,
 * secrets resolved, masked, and absent from everything stored in Redis.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import type { SandqueueClient } from "../../producer/client.js";
import type { JobResult } from "../../producer/job-result.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { REDIS_URL, requireCommand, startTestWorker, tempDir, testClient, uniqueQueue } from "../support/harness.js";
import { rawTar } from "../unit/archive-helpers.js";

requireCommand("bwrap", "bubblewrap");

const SECRET_VALUE = `s3cr3t-${Date.now()}-value`;

describe("workspaces, snapshots and secrets through the pipeline", () => {
  const queue = uniqueQueue("ws");
  const snapshots = tempDir("snapshots");
  const secretsDir = tempDir("secrets");
  let a: WorkerRuntime;
  let b: WorkerRuntime;
  let client: SandqueueClient;

  beforeAll(async () => {
    writeFileSync(join(secretsDir, "DIR_TOKEN"), "from-a-file\n");
    process.env.SANDQUEUE_SECRET_API_TOKEN = SECRET_VALUE;
    const common = { snapshotsUrl: `file://${snapshots}`, secretsDir, concurrency: 1 };
    a = await startTestWorker(queue, { ...common, workerId: "ws-a" });
    b = await startTestWorker(queue, { ...common, workerId: "ws-b", workspaceLimits: { maxBytes: 1024 * 1024, maxEntries: 1000, maxDepth: 16 } });
    client = testClient(queue);
  });
  afterAll(async () => {
    delete process.env.SANDQUEUE_SECRET_API_TOKEN;
    await client?.close();
    await a?.close(0);
    await b?.close(0);
  });

  const run = async (spec: Record<string, unknown>): Promise<JobResult> =>
    client.waitForResult((await client.enqueue(spec)).id, { timeoutMs: 30_000 });

  it("chains three jobs through snapshots, whichever worker runs each", async () => {
    const install = await run({ kind: "shell", script: "mkdir -p deps && echo lib > deps/lib.txt && echo v1 > state", workspace: { persist: true } });
    expect(install).toMatchObject({ status: "succeeded" });
    expect(install.snapshot?.id).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(install.snapshot?.files).toBe(2); // regular files: deps/lib.txt, state
    expect(install.timings.snapshotMs).toBeGreaterThanOrEqual(0);

    const build = await run({
      kind: "shell",
      script: "cat deps/lib.txt state && echo built > out.bin && mkdir -p node_modules && echo big > node_modules/x",
      workspace: { from: install.snapshot!.id, persist: true, exclude: ["node_modules/**"] },
    });
    expect(build).toMatchObject({ status: "succeeded", stdout: "lib\nv1\n" });
    expect(build.timings.hydrateMs).toBeGreaterThanOrEqual(0);

    const test = await run({
      kind: "python",
      code: "import os\nprint(open('out.bin').read().strip(), os.path.exists('node_modules/x'), open('deps/lib.txt').read().strip())",
      workspace: { from: build.snapshot!.id },
    });
    expect(test).toMatchObject({ status: "succeeded", stdout: "built False lib\n", snapshot: null });
    // Spread jobs over both workers: different machines in production.
    const workers = new Set([install.worker, build.worker, test.worker]);
    const more = await Promise.all(
      Array.from({ length: 6 }, () => run({ kind: "shell", script: "cat out.bin", workspace: { from: build.snapshot!.id } })),
    );
    for (const r of more) expect(r).toMatchObject({ status: "succeeded", stdout: "built\n" });
    for (const r of more) workers.add(r.worker);
    expect(workers).toEqual(new Set(["ws-a", "ws-b"]));
  });

  it("identical workspaces share one snapshot id", async () => {
    const spec = { kind: "shell", script: "echo same > f", workspace: { persist: true } };
    const [x, y] = [await run(spec), await run(spec)];
    expect(x.snapshot?.id).toBeDefined();
    expect(y.snapshot?.id).toBe(x.snapshot?.id);
  });

  it("an unknown snapshot ends as error without retries", async () => {
    const r = await run({ kind: "shell", script: "true", workspace: { from: `sha256:${"0".repeat(64)}` } });
    expect(r).toMatchObject({ status: "error", attempts: 1 });
    expect(r.error?.code).toBe(ErrorCodes.SNAPSHOT_NOT_FOUND);
  });

  it("a workspace over the snapshot limits ends killed with reason workspace_limit", async () => {
    // Worker b allows 1 MiB; worker a the default 1 GiB: run it until b takes it.
    let r: JobResult | undefined;
    for (let i = 0; i < 10 && r?.worker !== "ws-b"; i++) {
      r = await run({ kind: "shell", script: "head -c 2000000 /dev/zero > big", workspace: { persist: true } });
    }
    expect(r).toMatchObject({ worker: "ws-b", status: "killed", reason: "workspace_limit", snapshot: null });
  });

  it("a venv created in one job runs in the next, hydrated from its snapshot (absolute symlinks are kept)", async () => {
    const make = await run({ kind: "shell", script: "python3 -m venv --without-pip venv && readlink venv/bin/python3", workspace: { persist: true } });
    expect(make, make.stderr).toMatchObject({ status: "succeeded", stdout: expect.stringMatching(/^\/usr\/bin\/python3/) });
    const use = await run({
      kind: "shell",
      script: "venv/bin/python -c 'import sys; print(sys.prefix, sys.executable, sys.prefix != sys.base_prefix)'",
      workspace: { from: make.snapshot!.id },
    });
    expect(use).toMatchObject({ status: "succeeded", stdout: "/workspace/venv /workspace/venv/bin/python True\n" });
  });

  it("a workspace path over MAX_ARCHIVE_PATH_BYTES ends killed/workspace_limit on the first attempt; an excluded one persists", async () => {
    // 13 nested 250-byte directories: 3262 bytes, within what the host can name, over what an archive may hold.
    const script = 'd=$(printf "d%.0s" $(seq 250)); for i in $(seq 13); do mkdir $d && cd $d; done; echo deep > f; echo made';
    const r = await run({ kind: "shell", script, workspace: { persist: true } });
    expect(r).toMatchObject({ status: "killed", reason: "workspace_limit", attempts: 1, snapshot: null, error: null, stdout: "made\n" });
    const excluded = await run({ kind: "shell", script: `${script}; cd /workspace && echo kept > top`, workspace: { persist: true, exclude: ["d*"] } });
    expect(excluded).toMatchObject({ status: "succeeded", attempts: 1 });
    const back = await run({ kind: "shell", script: "cat top; ls", workspace: { from: excluded.snapshot!.id } });
    expect(back.stdout).toBe("kept\ntop\n");
  });

  it("a snapshot holding a path the host cannot hold ends error TAR_PATH_TOO_LONG on the first attempt, without host paths", async () => {
    const store = (buf: Buffer): string => {
      const hex = createHash("sha256").update(buf).digest("hex");
      mkdirSync(join(snapshots, "sha256"), { recursive: true });
      writeFileSync(join(snapshots, "sha256", `${hex}.tar`), buf);
      return `sha256:${hex}`;
    };
    const seg = "d".repeat(200);
    for (const name of [`${`${seg}/`.repeat(20)}f`.slice(0, 4096), `a/${"s".repeat(256)}`]) {
      const id = store(await rawTar([{ name, type: "file", mode: 0o644, body: "x" }]));
      const r = await run({ kind: "shell", script: "echo SHOULD-NOT-RUN", workspace: { from: id } });
      expect(r).toMatchObject({ status: "error", attempts: 1, stdout: "" });
      expect(r.error?.code).toBe(ErrorCodes.TAR_PATH_TOO_LONG);
      expect(r.error?.message).toMatch(/limited to \d+ bytes/);
      expect(r.error?.message).not.toMatch(/\/tmp\/|\.sandqueue|\/proc\//);
    }
  });

  it("resolves secrets from the environment and a directory, masks them, keeps them out of Redis", async () => {
    const r = await run({
      kind: "shell",
      secrets: ["API_TOKEN", "DIR_TOKEN"],
      script: 'echo "token=$API_TOKEN"; printf %s "$API_TOKEN" | head -c 10; echo; echo "$DIR_TOKEN" >&2; echo "$API_TOKEN" > leaked.txt',
      workspace: { persist: true },
    });
    // The job wrote the secret into its workspace: the result says so and nothing is persisted.
    expect(r.status).toBe("error");
    expect(r.error?.code).toBe(ErrorCodes.SECRET_IN_WORKSPACE);
    expect(r.error?.message).toContain("API_TOKEN");
    expect(r.error?.message).not.toContain(SECRET_VALUE);
    expect(r.snapshot).toBeNull();
    expect(r.stdout).toContain("token=***");
    expect(r.stdout).not.toContain(SECRET_VALUE);
    expect(r.stderr).toBe("***\n");
    // A job that uses the secret without writing it persists normally.
    const clean = await run({ kind: "shell", secrets: ["API_TOKEN"], script: 'test -n "$API_TOKEN" && echo ok > used', workspace: { persist: true } });
    expect(clean).toMatchObject({ status: "succeeded", error: null });
    expect(clean.snapshot?.id).toMatch(/^sha256:/);
    // No stored snapshot holds the value.
    const files = readdirSync(snapshots, { recursive: true, withFileTypes: true }).filter((d) => d.isFile());
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) expect(readFileSync(join(f.parentPath, f.name)).includes(SECRET_VALUE)).toBe(false);
    // Nothing in Redis holds the value: scan every key of this queue.
    const redis = new Redis(REDIS_URL);
    try {
      const keys = await redis.keys(`sandq:${queue}:*`);
      expect(keys.length).toBeGreaterThan(0);
      for (const key of keys) {
        const type = await redis.type(key);
        const dump =
          type === "hash" ? JSON.stringify(await redis.hgetall(key))
          : type === "string" ? String(await redis.get(key))
          : type === "list" ? JSON.stringify(await redis.lrange(key, 0, -1))
          : type === "zset" ? JSON.stringify(await redis.zrange(key, 0, -1))
          : type === "stream" ? JSON.stringify(await redis.xrange(key, "-", "+"))
          : type === "set" ? JSON.stringify(await redis.smembers(key))
          : "";
        expect(dump, key).not.toContain(SECRET_VALUE);
        expect(dump, key).not.toContain("from-a-file");
      }
    } finally {
      redis.disconnect();
    }
  });

  it("ends a job naming an unknown secret as error, not retried", async () => {
    const r = await run({ kind: "shell", script: "true", secrets: ["NO_SUCH_SECRET"] });
    expect(r).toMatchObject({ status: "error", attempts: 1 });
    expect(r.error?.code).toBe(ErrorCodes.SECRET_NOT_FOUND);
    expect(r.error?.message).toContain("NO_SUCH_SECRET");
  });

  it("rejects inline files whose paths leave the workspace before enqueueing", async () => {
    await expect(client.enqueue({ kind: "shell", script: "true", files: { "../escape": "x" } })).rejects.toMatchObject({
      code: ErrorCodes.SPEC_INVALID,
    });
  });
});

describe("snapshot retention", () => {
  it("a worker with SANDQUEUE_SNAPSHOT_RETENTION prunes older snapshots", async () => {
    const queue = uniqueQueue("retention");
    const dir = tempDir("retention");
    const keep = await startTestWorker(queue, { snapshotsUrl: `file://${dir}` });
    const client = testClient(queue);
    try {
      const r = await client.waitForResult((await client.enqueue({ kind: "shell", script: "echo x > f", workspace: { persist: true } })).id, {
        timeoutMs: 30_000,
      });
      expect(r.snapshot?.id).toBeDefined();
      const { openSnapshotStore } = await import("../../worker/snapshot/index.js");
      const store = openSnapshotStore(`file://${dir}`);
      expect(await store.has(r.snapshot!.id)).toBe(true);
      await keep.close(0);
      await new Promise((res) => setTimeout(res, 20));
      const pruner = await startTestWorker(queue, { snapshotsUrl: `file://${dir}`, snapshotRetentionMs: 10 });
      const deadline = Date.now() + 5000;
      while ((await store.has(r.snapshot!.id)) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
      expect(await store.has(r.snapshot!.id)).toBe(false);
      await pruner.close(0);
      await store.close();
    } finally {
      await client.close();
      await keep.close(0);
    }
  });
});
