/**
 * The e2b provider (providers/e2b, on the official `e2b` SDK) against the
 * E2B stand-in (standins/e2b), whose sandboxes are real bubblewrap
 * sandboxes: the provider contract suite, faults (5xx bursts, a lost create
 * answer, 429, a refused key, a sandbox killed mid-job, slow answers), stdin
 * and reaping through the SDK's list call. Needs root and bubblewrap;
 * fails, never skips, without them.
 */
import { mkdtemp, rm, rmdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox as SdkSandbox } from "e2b";
import { describeProviderContract } from "../../providers/contract.js";
import { LocalProvider } from "../../providers/local/index.js";
import { ownershipLabels, type SandboxSpec } from "../../providers/provider.js";
import { E2bProvider, type E2bProviderOptions } from "../../providers/e2b/index.js";
import { E2bStandin } from "../../standins/e2b/index.js";
import { filesToTar } from "../../providers/archive/index.js";
import { requireCommand } from "../support/harness.js";

let tmp: string;
let local: LocalProvider;
let standin: E2bStandin;
const cgroupParent = `sandqueue-e2b-prov-${process.pid}`;

beforeAll(async () => {
  requireCommand("bwrap", "bubblewrap");
  tmp = await mkdtemp(path.join(os.tmpdir(), "sandqueue-e2b-prov-"));
  local = new LocalProvider({ workRoot: path.join(tmp, "work"), cgroupParent });
  standin = await E2bStandin.start({ provider: local });
});

afterAll(async () => {
  await standin?.stop();
  await local?.close();
  for (const dir of local?.cgroupParentDirs ?? []) await rmdir(dir).catch(() => undefined);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function makeProvider(over: Partial<E2bProviderOptions> = {}): E2bProvider {
  return new E2bProvider({
    apiKey: standin.apiKey,
    apiUrl: standin.controlUrl,
    sandboxUrl: standin.envdUrl,
    template: "base",
    owner: "worker-under-test",
    createTimeoutMs: 30_000,
    createRetries: 3,
    requestTimeoutMs: 30_000,
    ...over,
  });
}

function spec(over: Partial<SandboxSpec> = {}): SandboxSpec {
  return {
    image: "host",
    limits: { memoryMb: 256, pids: 64 },
    network: "none",
    labels: ownershipLabels("worker-under-test", "job-1"),
    annotations: {},
    maxLifetimeMs: 600_000,
    ...over,
  };
}

const sh = (script: string) => ({ argv: ["/bin/sh", "-c", script], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 20_000, maxOutputBytes: 1 << 20 });

describeProviderContract("e2b (stand-in)", async () => makeProvider(), {
  image: "host",
  listResources: async () => standin.sandboxList().filter((s) => s.metadata["sandqueue.test"] === "contract").map((s) => s.id).sort(),
});

/** The sandboxes of a job label in the service's own list. */
const ofJob = (job: string) => standin.sandboxList().filter((s) => s.metadata["sandqueue.io/job"] === job);
const requestsSince = (n: number) => standin.requests.slice(n);

describe("e2b provider: faults", () => {
  let provider: E2bProvider;
  beforeAll(() => {
    provider = makeProvider();
  });
  afterAll(async () => {
    standin.faults.clear();
    await provider?.close();
  });

  it("creates from the template, labelled for ownership, without internet, with the job's lifetime as its timeout", async () => {
    const t0 = Date.now();
    const box = await provider.acquire(spec({ labels: ownershipLabels("worker-under-test", "job-labels"), maxLifetimeMs: 900_000 }), {});
    const [s] = ofJob("job-labels");
    expect(s).toMatchObject({ id: box.id, template: "base", allowInternetAccess: false });
    expect(s!.metadata).toMatchObject({ "app.kubernetes.io/managed-by": "sandqueue", "sandqueue.io/worker": "worker-under-test" });
    expect(Math.abs(s!.endAt.getTime() - (t0 + 900_000))).toBeLessThan(5_000);
    await box.release();
    expect(ofJob("job-labels")).toEqual([]);
  });

  it("a 5xx burst on create is retried; a create whose answer was lost is found by its token, not made twice", async () => {
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 500 }, count: 2 });
    const a = await provider.acquire(spec({ labels: ownershipLabels("worker-under-test", "job-burst") }), {});
    expect(ofJob("job-burst").map((s) => s.id)).toEqual([a.id]);
    await a.release();

    standin.faults.add({ match: { op: "create" }, action: { type: "lose", code: 502 } });
    const b = await provider.acquire(spec({ labels: ownershipLabels("worker-under-test", "job-lost") }), {});
    expect(ofJob("job-lost").map((s) => s.id)).toEqual([b.id]);
    expect((await b.exec(sh("echo adopted"))).stdout.toString()).toBe("adopted\n");
    await b.release();
    expect(ofJob("job-lost")).toEqual([]);
  });

  it("429 on create waits and retries; 429 past the retries is PROVIDER_RATE_LIMITED with a wait", async () => {
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 429 } });
    const a = await provider.acquire(spec(), {});
    await a.release();
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 429 }, count: 10 });
    const quick = makeProvider({ createRetries: 1 });
    const err = await quick.acquire(spec({ labels: ownershipLabels("worker-under-test", "job-429") }), {}).catch((e: unknown) => e);
    standin.faults.clear();
    await quick.close();
    expect(err).toMatchObject({ code: "SANDQ_ERR_PROVIDER_RATE_LIMITED", retryable: true });
    expect((err as { retryAfterMs?: number }).retryAfterMs).toBeGreaterThan(0);
    expect(ofJob("job-429")).toEqual([]);
  });

  it("a refused key (401, 403) is PROVIDER_CREDENTIALS, not retried, and the key is in no message", async () => {
    const bad = makeProvider({ apiKey: "e2b_not-the-key-not-the-key" });
    const before = standin.requests.length;
    const err = await bad.acquire(spec(), {}).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
    expect((err as Error).message).not.toContain("not-the-key");
    expect(requestsSince(before).filter((q) => q.op === "create")).toHaveLength(1);
    await expect(bad.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS" });
    await bad.close();
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 403 } });
    const n = standin.requests.length;
    await expect(provider.acquire(spec(), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
    expect(requestsSince(n).filter((q) => q.op === "create")).toHaveLength(1);
  });

  it("a 5xx on a command's start is PROVIDER_UNAVAILABLE (retryable); the sandbox still works afterwards", async () => {
    const box = await provider.acquire(spec(), {});
    standin.faults.add({ match: { op: "process-start", sandbox: box.id }, action: { type: "fail", code: 503 } });
    await expect(box.exec(sh("echo no"))).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
    expect((await box.exec(sh("echo yes"))).stdout.toString()).toBe("yes\n");
    await box.release();
  });

  it("slow answers are waited for; the wall time is enforced client-side even when the service is slow to answer", async () => {
    const box = await provider.acquire(spec(), {});
    standin.faults.add({ match: { op: "process-start", sandbox: box.id }, action: { type: "delay", ms: 400 } });
    expect((await box.exec(sh("echo late"))).stdout.toString()).toBe("late\n");
    standin.faults.add({ match: { op: "process-start", sandbox: box.id }, action: { type: "delay", ms: 5_000 } });
    const t0 = Date.now();
    const r = await box.exec({ ...sh("echo never"), timeoutMs: 800 });
    expect(r.limitHit).toBe("timeout");
    expect(r.stdout.toString()).toBe("");
    expect(Date.now() - t0).toBeLessThan(4_000);
    await box.release();
  });

  it("a timed-out command is killed through envd (SendSignal), not only left behind by its stream", async () => {
    const box = await provider.acquire(spec(), {});
    const before = standin.requests.length;
    const r = await box.exec({ ...sh("sleep 30 & sleep 30"), timeoutMs: 500 });
    expect(r).toMatchObject({ limitHit: "timeout", exitCode: null, signal: "SIGKILL" });
    expect(requestsSince(before).filter((q) => q.op === "process-signal" && q.status === 200)).toHaveLength(1);
    expect(standin.sandboxList().find((s) => s.id === box.id)?.processes).toBe(0);
    await box.release();
  });

  it("a sandbox killed under a running job is SANDBOX_LOST (retryable)", async () => {
    const box = await provider.acquire(spec(), {});
    standin.faults.add({ match: { op: "process-start", sandbox: box.id }, action: { type: "vanish", afterMs: 300 } });
    const err = await box.exec(sh("echo started; sleep 20")).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST", retryable: true });
    await expect(box.release()).resolves.toBeUndefined();
    expect(standin.sandboxList().find((s) => s.id === box.id)).toBeUndefined();
  });

  it("a 5xx burst on kill: release retries until the sandbox is gone; one already gone counts as gone", async () => {
    const box = await provider.acquire(spec({ labels: ownershipLabels("worker-under-test", "job-delete") }), {});
    standin.faults.add({ match: { op: "kill", sandbox: box.id }, action: { type: "fail", code: 500 }, count: 2 });
    await box.release();
    expect(ofJob("job-delete")).toEqual([]);
    const other = await provider.acquire(spec({ labels: ownershipLabels("worker-under-test", "job-delete-2") }), {});
    await SdkSandbox.kill(other.id, provider.conn);
    await expect(other.release()).resolves.toBeUndefined();
  });

  it("feeds stdin (bytes, in chunks, then end-of-file)", async () => {
    const box = await provider.acquire(spec(), {});
    // Every byte value: stdin is bytes end to end (only output is decoded as text), checked by its digest in the sandbox.
    const big = Buffer.alloc(300_000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
    const r = await box.exec({ ...sh("wc -c"), stdin: big });
    expect(r).toMatchObject({ exitCode: 0, limitHit: null });
    const { createHash } = await import("node:crypto");
    expect(r.stdout.toString()).toBe("300000\n");
    const digest = await box.exec({ ...sh("sha256sum | cut -d' ' -f1"), stdin: big });
    expect(digest.stdout.toString().trim()).toBe(createHash("sha256").update(big).digest("hex"));
    expect((await box.exec({ ...sh("cat"), stdin: "line one\nline two\n" })).stdout.toString()).toBe("line one\nline two\n");
    await box.release();
  });

  it("output is decoded as UTF-8 text by the SDK: invalid bytes are not kept (byteExactOutput is false)", async () => {
    expect(provider.capabilities.byteExactOutput).toBe(false);
    const box = await provider.acquire(spec(), {});
    const r = await box.exec(sh("printf 'a\\377b'"));
    expect(r.stdout.equals(Buffer.from("a\ufffdb", "utf8"))).toBe(true);
    await box.release();
  });

  it("refuses path escapes before any request", async () => {
    const box = await provider.acquire(spec(), {});
    const before = standin.requests.length;
    for (const dir of ["/workspace/../etc", "/etc", "relative", "/workspace/a/../../x"]) {
      await expect(box.putArchive(dir, filesToTar({ "a.txt": "x" }))).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
      await expect(box.getArchive(dir)).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
    }
    expect(standin.requests.length).toBe(before);
    await box.release();
  });

  it("a bad archive is refused on the worker: nothing is uploaded", async () => {
    const box = await provider.acquire(spec(), {});
    const { Readable } = await import("node:stream");
    const before = standin.requests.length;
    await expect(box.putArchive("/workspace", Readable.from([Buffer.alloc(1024, 0x41)]))).rejects.toMatchObject({ code: expect.stringMatching(/^SANDQ_ERR_TAR_/) });
    expect(requestsSince(before).filter((q) => q.op === "files-write")).toEqual([]);
    await box.release();
  });
});

describe("e2b provider: reaping through the SDK's list call", () => {
  it("kills the sandboxes of dead workers only: never its own, a live worker's, or an unlabelled one", async () => {
    const conn = makeProvider().conn;
    const make = (metadata: Record<string, string>) => SdkSandbox.create("base", { ...conn, metadata });
    const dead = await make(ownershipLabels("dead-worker", "j1"));
    const live = await make(ownershipLabels("live-worker", "j2"));
    const unlabelled = await make({ team: "someone-else" });
    const provider = makeProvider({ owner: "reaping-worker" });
    const own = await provider.acquire(spec({ labels: ownershipLabels("reaping-worker", "j3") }), {});
    const asked: string[][] = [];
    const before = standin.requests.length;
    const n = await provider.reap({
      liveOwners: async (workers) => {
        asked.push([...workers].sort());
        return new Set(workers.filter((w) => w === "live-worker"));
      },
    });
    expect(n).toBe(1);
    expect(asked.flat()).toContain("dead-worker");
    expect(asked.flat()).not.toContain("reaping-worker");
    const ids = standin.sandboxList().map((s) => s.id);
    expect(ids).not.toContain(dead.sandboxId);
    expect(ids).toEqual(expect.arrayContaining([live.sandboxId, unlabelled.sandboxId, own.id]));
    // The reaper found them through the list call.
    expect(requestsSince(before).some((q) => q.op === "list" && q.status === 200)).toBe(true);
    await own.release();
    await provider.close();
    await live.kill();
    await unlabelled.kill();
  });
});
