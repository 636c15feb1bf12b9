/**
 * The superserve provider (providers/superserve, on @superserve/sdk) against
 * the Superserve stand-in (standins/superserve), whose sandboxes are real
 * bubblewrap sandboxes: the provider contract suite, faults (5xx bursts,
 * 429, 401/503 answered by one activate and one retry, a sandbox failed or
 * deleted mid-job), the seed's reattach rules, warm reuse, reaping through
 * the SDK's list call. Needs root and bubblewrap; fails, never skips,
 * without them.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox as SdkSandbox } from "@superserve/sdk";
import { describeProviderContract } from "../../providers/contract.js";
import { ownershipLabels, type SandboxSpec } from "../../providers/provider.js";
import { SuperserveProvider, type SuperserveProviderOptions } from "../../providers/superserve/index.js";
import { SuperserveStandin } from "../../standins/superserve/index.js";
import { localStandinForFile } from "../support/local-standin.js";
import { contractSandboxes, expectBadKeyRefused, expectCreateBurstAndLostAnswer, expectCreateRateLimited, expectPathEscapesRefused, expectOnlyDeadWorkersSandboxReaped, expectSlowAnswersWaited, providerForSuite, sandboxSpec as spec, sh } from "../support/sdk-provider-cases.js";

let standin: SuperserveStandin;
localStandinForFile("superserve-prov", async (local) => (standin = await SuperserveStandin.start({ provider: local })));

/** The sandboxes of a job label in the service's own list; the requests it served since a mark. */
const ofJob = (job: string) => standin.sandboxList().filter((s) => s.metadata["sandqueue.io/job"] === job);
const requestsSince = (n: number) => standin.requests.slice(n);

function makeProvider(over: Partial<SuperserveProviderOptions> = {}): SuperserveProvider {
  return new SuperserveProvider({
    apiKey: standin.apiKey,
    baseUrl: standin.controlUrl,
    dataPlaneUrl: standin.dataUrl,
    templates: { host: "superserve/python-3.11" },
    owner: "worker-under-test",
    createTimeoutMs: 30_000,
    createRetries: 3,
    resumeTimeoutMs: 10_000,
    pauseOnRelease: false,
    warmMax: 4,
    pausedTtlSeconds: 3600,
    ...over,
  });
}

describeProviderContract("superserve (stand-in)", async () => makeProvider(), { image: "host", listResources: contractSandboxes(() => standin) });

describe("superserve provider: faults", () => {
  let provider: SuperserveProvider;
  providerForSuite(() => (provider = makeProvider()), () => standin.faults.clear());

  it("creates from the mapped template, labelled for ownership, with egress denied and the job's lifetime", async () => {
    const box = await provider.acquire(spec({ labels: ownershipLabels("worker-under-test", "job-labels") }), {});
    const [s] = ofJob("job-labels");
    expect(s).toMatchObject({ id: box.id, status: "active", network: { deny_out: ["0.0.0.0/0"] } });
    expect(s!.metadata).toMatchObject({ "app.kubernetes.io/managed-by": "sandqueue", "sandqueue.io/worker": "worker-under-test" });
    expect(standin.requests.find((q) => q.op === "create" && q.status === 201)).toBeDefined();
    await box.release();
    expect(ofJob("job-labels")).toEqual([]);
  });

  it("a 5xx burst on create is retried; a create whose answer was lost is found by its token, not made twice", async () => {
    await expectCreateBurstAndLostAnswer(provider, standin);
  });

  it("429 on create waits and retries; 429 past the retries is PROVIDER_RATE_LIMITED with a wait", async () => {
    await expectCreateRateLimited(provider, makeProvider({ createRetries: 1 }), standin, { type: "fail", code: 429, retryAfterSeconds: 1 });
  });

  it("a bad API key is PROVIDER_CREDENTIALS, not retried, and the key is in no message", async () => {
    await expectBadKeyRefused(makeProvider({ apiKey: "ss_live_use_not-the-key-not-the-key-not-the-k" }), standin);
  });

  it("401 and 503 on the data plane: one activate (the token rotates), one retry; a second 503 is PROVIDER_UNAVAILABLE", async () => {
    const box = await provider.acquire(spec(), {});
    for (const code of [401, 503]) {
      standin.faults.add({ match: { op: "exec-stream", sandbox: box.id }, action: { type: "fail", code } });
      const before = standin.requests.length;
      const r = await box.exec(sh("echo retried"));
      expect(r).toMatchObject({ exitCode: 0, limitHit: null });
      expect(r.stdout.toString()).toBe("retried\n");
      expect(requestsSince(before).map((q) => `${q.op} ${q.status}`)).toEqual([`exec-stream ${code}`, "activate 200", "exec-stream 200"]);
    }
    standin.faults.add({ match: { op: "exec-stream", sandbox: box.id }, action: { type: "fail", code: 503 }, count: 2 });
    await expect(box.exec(sh("echo no"))).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
    // Files go through the same rule.
    standin.faults.add({ match: { op: "files-write", sandbox: box.id }, action: { type: "fail", code: 401 } });
    const { filesToTar } = await import("../../providers/archive/index.js");
    await box.putArchive("/workspace", filesToTar({ "a.txt": "after rotation\n" }));
    expect((await box.exec(sh("cat /workspace/a.txt"))).stdout.toString()).toBe("after rotation\n");
    await box.release();
  });

  it("slow answers are waited for; the wall time is enforced client-side even when the service is slow to answer", async () => {
    await expectSlowAnswersWaited(provider, standin, "exec-stream");
  });

  it("a sandbox that fails or is deleted under a running job is SANDBOX_LOST (retryable)", async () => {
    for (const status of ["failed", "deleted"] as const) {
      const box = await provider.acquire(spec(), {});
      standin.faults.add({ match: { op: "exec-stream", sandbox: box.id }, action: { type: "vanish", afterMs: 300, status } });
      const err = await box.exec(sh("echo started; sleep 20")).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST", retryable: true });
      await box.release();
      expect(standin.sandboxList().find((s) => s.id === box.id)).toBeUndefined();
    }
  });

  it("a sandbox paused under a running job: the job fails retryable (no hang); the next command resumes it (activate)", async () => {
    const box = await provider.acquire(spec(), {});
    const running = box.exec(sh("echo started; sleep 20"));
    await new Promise((r) => setTimeout(r, 400));
    await standin.setStatus(box.id, "paused");
    const t0 = Date.now();
    await expect(running).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
    expect(Date.now() - t0).toBeLessThan(5_000);
    const before = standin.requests.length;
    expect((await box.exec(sh("echo resumed"))).stdout.toString()).toBe("resumed\n");
    // 503: the data plane of a paused sandbox (its token still current): the SDK activates, which resumes it.
    expect(requestsSince(before).map((q) => `${q.op} ${q.status}`)).toEqual(["exec-stream 503", "activate 200", "exec-stream 200"]);
    await box.release();
  });

  it("a 5xx burst on delete: release retries until the sandbox is gone; 404 counts as gone", async () => {
    const box = await provider.acquire(spec({ labels: ownershipLabels("worker-under-test", "job-delete") }), {});
    standin.faults.add({ match: { op: "delete", sandbox: box.id }, action: { type: "fail", code: 500 }, count: 2 });
    await box.release();
    expect(ofJob("job-delete")).toEqual([]);
    const other = await provider.acquire(spec({ labels: ownershipLabels("worker-under-test", "job-delete-2") }), {});
    await SdkSandbox.killById(other.id, { apiKey: standin.apiKey, baseUrl: standin.controlUrl });
    await expect(other.release()).resolves.toBeUndefined();
  });

  it("refuses path escapes before any request", async () => {
    await expectPathEscapesRefused(provider, standin);
  });

  it("a job asking for stdin is refused (CAPABILITY_UNSUPPORTED), nothing run", async () => {
    const box = await provider.acquire(spec(), {});
    const before = standin.requests.length;
    await expect(box.exec({ ...sh("cat"), stdin: "x" })).rejects.toMatchObject({ code: "SANDQ_ERR_CAPABILITY_UNSUPPORTED", retryable: false });
    expect(standin.requests.length).toBe(before);
    await box.release();
  });
});

describe("superserve provider: reattach (the seed's resume rules)", () => {
  let provider: SuperserveProvider;
  const conn = () => ({ apiKey: standin.apiKey, baseUrl: standin.controlUrl });
  beforeAll(() => {
    provider = makeProvider();
  });
  afterAll(async () => {
    await provider?.close();
  });

  async function sandboxIn(status: string | null): Promise<SdkSandbox> {
    const sdk = await SdkSandbox.create({ ...conn(), name: `reattach-${status}`, fromTemplate: "superserve/python-3.11" });
    if (status) await standin.setStatus(sdk.id, status);
    return sdk;
  }
  const statusOf = (id: string) => standin.sandboxList().find((s) => s.id === id)?.status;

  it("active: ready as it is", async () => {
    const sdk = await sandboxIn(null);
    expect(await provider.reattach(sdk)).toBe("ready");
    await sdk.kill();
  });

  it("paused: resumed, polled until active, with a fresh token that works", async () => {
    const sdk = await sandboxIn("paused");
    const before = standin.requests.length;
    expect(await provider.reattach(sdk)).toBe("resumed");
    expect(statusOf(sdk.id)).toBe("active");
    expect(requestsSince(before).filter((q) => q.op === "resume")).toHaveLength(1);
    expect((await sdk.commands.run("echo back")).stdout).toBe("back\n");
    expect(requestsSince(before).filter((q) => q.op === "activate")).toHaveLength(0);
    await sdk.kill();
  });

  it("resuming: polled until active, not resumed again", async () => {
    const sdk = await sandboxIn("resuming");
    const before = standin.requests.length;
    expect(await provider.reattach(sdk)).toBe("resumed");
    expect(statusOf(sdk.id)).toBe("active");
    expect(requestsSince(before).filter((q) => q.op === "resume")).toHaveLength(0);
    await sdk.kill();
  });

  for (const status of ["failed", "deleted", "hibernating-in-a-new-way"]) {
    it(`${status}: recreate (and the old one is deleted)`, async () => {
      const sdk = await sandboxIn(status);
      expect(await provider.reattach(sdk)).toBe("recreate");
      expect(statusOf(sdk.id)).toBeUndefined();
    });
  }

  it("gone (404): recreate", async () => {
    const sdk = await sandboxIn(null);
    await SdkSandbox.killById(sdk.id, conn());
    expect(await provider.reattach(sdk)).toBe("recreate");
  });
});

describe("superserve provider: warm reuse (pause on release)", () => {
  it("release cleans and pauses; the next acquire resumes the same sandbox, relabelled; a failed one is recreated; close deletes them", async () => {
    const provider = makeProvider({ pauseOnRelease: true, owner: "warm-worker" });
    const labels = (job: string) => ownershipLabels("warm-worker", job);
    const a = await provider.acquire(spec({ labels: labels("warm-1") }), {});
    await a.exec(sh("echo secret > /workspace/left-behind; mkdir -p /workspace/d"));
    await a.release();
    await new Promise((r) => setTimeout(r, 100));
    expect(standin.sandboxList().find((s) => s.id === a.id)?.status).toBe("paused");
    expect(provider.readySandboxes()).toEqual({ "superserve/python-3.11": 1 });

    const b = await provider.acquire(spec({ labels: labels("warm-2") }), {});
    expect(b.id).toBe(a.id);
    const s = standin.sandboxList().find((x) => x.id === b.id)!;
    expect(s.status).toBe("active");
    expect(s.metadata["sandqueue.io/job"]).toBe("warm-2");
    expect((await b.exec(sh("ls -A /workspace"))).stdout.toString()).toBe("");

    // A killed exec taints it: deleted at release, not paused.
    await b.exec({ ...sh("sleep 10"), timeoutMs: 300 });
    await b.release();
    expect(standin.sandboxList().find((x) => x.id === b.id)).toBeUndefined();

    const c = await provider.acquire(spec({ labels: labels("warm-3") }), {});
    await c.release();
    await standin.setStatus(c.id, "failed");
    const d = await provider.acquire(spec({ labels: labels("warm-4") }), {});
    expect(d.id).not.toBe(c.id);
    expect(standin.sandboxList().find((x) => x.id === c.id)).toBeUndefined();
    await d.release();
    expect(standin.sandboxList().filter((x) => x.metadata["sandqueue.io/worker"] === "warm-worker")).toHaveLength(1);
    await provider.close();
    expect(standin.sandboxList().filter((x) => x.metadata["sandqueue.io/worker"] === "warm-worker")).toEqual([]);
  });
});

describe("superserve provider: warm reuse, concurrent releases", () => {
  it("sandboxes released at once all reach the pool (none paused and forgotten); close deletes every one, even one still parking", async () => {
    const provider = makeProvider({ pauseOnRelease: true, owner: "warm-many" });
    const mine = () => standin.sandboxList().filter((x) => x.metadata["sandqueue.io/worker"] === "warm-many");
    const boxes = await Promise.all([1, 2, 3].map((i) => provider.acquire(spec({ labels: ownershipLabels("warm-many", `many-${i}`) }), {})));
    await Promise.all(boxes.map((b) => b.release()));
    expect(provider.readySandboxes()).toEqual({ "superserve/python-3.11": 3 });
    const late = await provider.acquire(spec({ labels: ownershipLabels("warm-many", "many-late") }), {});
    const parking = late.release();
    await provider.close();
    await parking;
    expect(mine()).toEqual([]);
  });
});

describe("superserve provider: reaping through the SDK's list call", () => {
  it("deletes the sandboxes of dead workers only: never its own, a live worker's, or an unlabelled one", async () => {
    const conn = { apiKey: standin.apiKey, baseUrl: standin.controlUrl };
    const make = (name: string, metadata: Record<string, string>) => SdkSandbox.create({ ...conn, name, fromTemplate: "superserve/python-3.11", metadata });
    const dead = await make("dead", ownershipLabels("dead-worker", "j1"));
    const live = await make("live", ownershipLabels("live-worker", "j2"));
    const unlabelled = await make("mine-not", { team: "someone-else" });
    await expectOnlyDeadWorkersSandboxReaped(makeProvider({ owner: "reaping-worker" }), standin, { dead: dead.id, live: live.id, unlabelled: unlabelled.id });
    await live.kill();
    await unlabelled.kill();
  });
});
