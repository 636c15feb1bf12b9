/**
 * The e2b provider (providers/e2b, on the official `e2b` SDK) against the
 * E2B stand-in (standins/e2b), whose sandboxes are real bubblewrap
 * sandboxes: the provider contract suite, faults (5xx bursts, a lost create
 * answer, 429, a refused key, a sandbox killed mid-job, slow answers), stdin
 * and reaping through the SDK's list call. Needs root and bubblewrap;
 * fails, never skips, without them.
 */
import { describe, expect, it } from "vitest";
import { Sandbox as SdkSandbox } from "e2b";
import { describeProviderContract } from "../../providers/contract.js";
import { ownershipLabels, type SandboxSpec } from "../../providers/provider.js";
import { E2bProvider, type E2bProviderOptions } from "../../providers/e2b/index.js";
import { E2bStandin } from "../../standins/e2b/index.js";
import { filesToTar } from "../../providers/archive/index.js";
import { localStandinForFile } from "../support/local-standin.js";
import { until } from "../support/standin-process.js";
import { contractSandboxes, expectBadKeyRefused, expectCreateBurstAndLostAnswer, expectCreateRateLimited, expectPathEscapesRefused, expectOnlyDeadWorkersSandboxReaped, expectSlowAnswersWaited, providerForSuite, sandboxSpec as spec, sh } from "../support/sdk-provider-cases.js";

let standin: E2bStandin;
localStandinForFile("e2b-prov", async (local) => (standin = await E2bStandin.start({ provider: local })));

/** The sandboxes of a job label in the service's own list; the requests it served since a mark. */
const ofJob = (job: string) => standin.sandboxList().filter((s) => s.metadata["sandqueue.io/job"] === job);
const requestsSince = (n: number) => standin.requests.slice(n);

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

describeProviderContract("e2b (stand-in)", async () => makeProvider(), { image: "host", listResources: contractSandboxes(() => standin) });

describe("e2b provider: warm pool", () => {
  it("hands out a sandbox created ahead, sets its timeout to the job's lifetime, refills, and leaves nothing at close", async () => {
    const pooled = () => standin.sandboxList().filter((s) => s.metadata["sandqueue.io/pooled"] === "true");
    const provider = makeProvider({ owner: "pool-worker", pool: { minIdle: 1, maxSize: 2 } });
    try {
      provider.prewarm(spec());
      await provider.pool.waitReady();
      const [ready] = pooled();
      expect(ready).toMatchObject({ template: "base", allowInternetAccess: false });
      expect(ready!.metadata).toMatchObject({ "app.kubernetes.io/managed-by": "sandqueue", "sandqueue.io/worker": "pool-worker" });
      expect(provider.readySandboxes()).toEqual({ base: 1 });
      const t0 = Date.now();
      const box = await provider.acquire(spec({ labels: ownershipLabels("pool-worker", "job-pooled"), maxLifetimeMs: 120_000 }), {});
      expect(box.id).toBe(ready!.id);
      const r = await box.exec({ argv: ["sh", "-c", "echo pooled"], env: {}, timeoutMs: 10_000, maxOutputBytes: 1024 });
      expect(r.stdout.toString()).toBe("pooled\n");
      // Set beside the job (not awaited by acquire): the pool's 15 min become the job's 2.
      await until("the job's timeout", async () => Math.abs(standin.sandboxList().find((s) => s.id === box.id)!.endAt.getTime() - (t0 + 120_000)) < 5_000, 5_000);
      await provider.pool.waitReady();
      expect(pooled().filter((s) => s.id !== box.id)).toHaveLength(1);
      await box.release();
    } finally {
      await provider.close();
    }
    expect(standin.sandboxList().filter((s) => s.metadata["sandqueue.io/worker"] === "pool-worker")).toEqual([]);
  });
});

describe("e2b provider: faults", () => {
  let provider: E2bProvider;
  providerForSuite(() => (provider = makeProvider()), () => standin.faults.clear());

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
    await expectCreateBurstAndLostAnswer(provider, standin);
  });

  it("429 on create waits and retries; 429 past the retries is PROVIDER_RATE_LIMITED with a wait", async () => {
    await expectCreateRateLimited(provider, makeProvider({ createRetries: 1 }), standin, { type: "fail", code: 429 });
  });

  it("a refused key (401, 403) is PROVIDER_CREDENTIALS, not retried, and the key is in no message", async () => {
    await expectBadKeyRefused(makeProvider({ apiKey: "e2b_not-the-key-not-the-key" }), standin);
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
    await expectSlowAnswersWaited(provider, standin, "process-start");
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
    await expectPathEscapesRefused(provider, standin);
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
    await expectOnlyDeadWorkersSandboxReaped(makeProvider({ owner: "reaping-worker" }), standin, { dead: dead.sandboxId, live: live.sandboxId, unlabelled: unlabelled.sandboxId });
    await live.kill();
    await unlabelled.kill();
  });
});
