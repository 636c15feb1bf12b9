/**
 * Setup and fault cases of the same shape for the providers on a hosted
 * service's SDK whose stand-in keeps a sandbox list with metadata labels and
 * a request log (e2b, superserve): each takes the stand-in, the provider
 * under test and the op name the stand-in's fault table knows a call by.
 */
import { afterAll, beforeAll, expect } from "vitest";
import { filesToTar } from "../../providers/archive/index.js";
import { ownershipLabels, type SandboxProvider, type SandboxSpec } from "../../providers/provider.js";
import { shellRequest } from "./harness.js";

type FaultAction = { type: "fail"; code: 500 | 429; retryAfterSeconds?: number } | { type: "lose"; code: 502 } | { type: "delay"; ms: number };

/** What these cases need of a stand-in: its sandbox list, its request log, its fault table (faults on its own op names, Op). */
export interface LabelledStandin<Op extends string = string> {
  sandboxList(): { id: string; metadata: Record<string, string> }[];
  readonly requests: readonly { op: string; status: number }[];
  readonly faults: {
    add(f: { match: { op?: Op; sandbox?: string }; action: FaultAction; count?: number }): unknown;
    clear(): void;
  };
}

/** Arms a fault on `op`: every such stand-in names its create "create"; the other ops are the caller's, of the stand-in's own. */
function arm<Op extends string>(standin: LabelledStandin<Op>, op: string, action: FaultAction, more: { sandbox?: string; count?: number } = {}): void {
  standin.faults.add({ match: { op: op as Op, ...(more.sandbox ? { sandbox: more.sandbox } : {}) }, action, ...(more.count ? { count: more.count } : {}) });
}

/** The spec these provider tests acquire with: host image, 256 MiB, 64 pids, no network, worker-under-test's job-1. */
export function sandboxSpec(over: Partial<SandboxSpec> = {}): SandboxSpec {
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

/** `sh -c script` with a 20 s wall time. */
export const sh = (script: string) => shellRequest(script, { timeoutMs: 20_000 });

/** The sandboxes of a job label in the stand-in's own list. */
export const sandboxesOfJob = <Op extends string>(standin: LabelledStandin<Op>, job: string) => standin.sandboxList().filter((s) => s.metadata["sandqueue.io/job"] === job);

/** The contract suite's sandboxes (labelled sandqueue.test=contract), for its listResources. */
export const contractSandboxes = <Op extends string>(standin: () => LabelledStandin<Op>) => async () =>
  standin()
    .sandboxList()
    .filter((s) => s.metadata["sandqueue.test"] === "contract")
    .map((s) => s.id)
    .sort();

/** One provider for a describe block's tests: made before them; after them the stand-in's faults cleared and it closed. */
export function providerForSuite(make: () => { close(): Promise<void> }, clearFaults: () => void): void {
  let provider: { close(): Promise<void> } | undefined;
  beforeAll(() => {
    provider = make();
  });
  afterAll(async () => {
    clearFaults();
    await provider?.close();
  });
}

/** A 5xx burst on create is retried into one sandbox; a create whose answer was lost is adopted by its token, not made twice. */
export async function expectCreateBurstAndLostAnswer<Op extends string>(provider: SandboxProvider, standin: LabelledStandin<Op>): Promise<void> {
  arm(standin, "create", { type: "fail", code: 500 }, { count: 2 });
  const a = await provider.acquire(sandboxSpec({ labels: ownershipLabels("worker-under-test", "job-burst") }), {});
  expect(sandboxesOfJob(standin, "job-burst").map((s) => s.id)).toEqual([a.id]);
  await a.release();

  arm(standin, "create", { type: "lose", code: 502 });
  const b = await provider.acquire(sandboxSpec({ labels: ownershipLabels("worker-under-test", "job-lost") }), {});
  expect(sandboxesOfJob(standin, "job-lost").map((s) => s.id)).toEqual([b.id]);
  expect((await b.exec(sh("echo adopted"))).stdout.toString()).toBe("adopted\n");
  await b.release();
  expect(sandboxesOfJob(standin, "job-lost")).toEqual([]);
}

/** One 429 on create is waited out; 429 past the retries (of `quick`, one retry) is PROVIDER_RATE_LIMITED with a wait, nothing made. */
export async function expectCreateRateLimited<Op extends string>(
  provider: SandboxProvider,
  quick: SandboxProvider & { close(): Promise<void> },
  standin: LabelledStandin<Op>,
  fault: { type: "fail"; code: 429; retryAfterSeconds?: number },
): Promise<void> {
  arm(standin, "create", fault);
  const a = await provider.acquire(sandboxSpec(), {});
  await a.release();
  arm(standin, "create", fault, { count: 10 });
  const err = await quick.acquire(sandboxSpec({ labels: ownershipLabels("worker-under-test", "job-429") }), {}).catch((e: unknown) => e);
  standin.faults.clear();
  await quick.close();
  expect(err).toMatchObject({ code: "SANDQ_ERR_PROVIDER_RATE_LIMITED", retryable: true });
  expect((err as { retryAfterMs?: number }).retryAfterMs).toBeGreaterThan(0);
  expect(sandboxesOfJob(standin, "job-429")).toEqual([]);
}

/** A refused key is PROVIDER_CREDENTIALS after one create, not retried, the key in no message; check() says the same. */
export async function expectBadKeyRefused<Op extends string>(bad: SandboxProvider & { close(): Promise<void> }, standin: LabelledStandin<Op>): Promise<void> {
  const before = standin.requests.length;
  const err = await bad.acquire(sandboxSpec(), {}).catch((e: unknown) => e);
  expect(err).toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
  expect((err as Error).message).not.toContain("not-the-key");
  expect(standin.requests.slice(before).filter((q) => q.op === "create")).toHaveLength(1);
  await expect(bad.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS" });
  await bad.close();
}

/** A slow answer to `op` (a command's start) is waited for; a slower one than the wall time still ends at it, client-side. */
export async function expectSlowAnswersWaited<Op extends string>(provider: SandboxProvider, standin: LabelledStandin<Op>, op: string): Promise<void> {
  const box = await provider.acquire(sandboxSpec(), {});
  arm(standin, op, { type: "delay", ms: 400 }, { sandbox: box.id });
  expect((await box.exec(sh("echo late"))).stdout.toString()).toBe("late\n");
  arm(standin, op, { type: "delay", ms: 5_000 }, { sandbox: box.id });
  const t0 = Date.now();
  const r = await box.exec({ ...sh("echo never"), timeoutMs: 800 });
  expect(r.limitHit).toBe("timeout");
  expect(r.stdout.toString()).toBe("");
  expect(Date.now() - t0).toBeLessThan(4_000);
  await box.release();
}

/** Archive paths outside /workspace are refused (PROVIDER_FAILED) before any request. */
export async function expectPathEscapesRefused<Op extends string>(provider: SandboxProvider, standin: LabelledStandin<Op>): Promise<void> {
  const box = await provider.acquire(sandboxSpec(), {});
  const before = standin.requests.length;
  for (const dir of ["/workspace/../etc", "/etc", "relative", "/workspace/a/../../x"]) {
    await expect(box.putArchive(dir, filesToTar({ "a.txt": "x" }))).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
    await expect(box.getArchive(dir)).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
  }
  expect(standin.requests.length).toBe(before);
  await box.release();
}

/**
 * Sandboxes made through the SDK for a dead worker, a live one and nobody
 * (ids given), plus one of the reaper's own: the reaper asks about the dead
 * and live owners (never itself), kills only the dead one's, and found them
 * through the service's list call. The reaper is released and closed after.
 */
export async function expectOnlyDeadWorkersSandboxReaped<Op extends string>(
  reaper: SandboxProvider & { close(): Promise<void> },
  standin: LabelledStandin<Op>,
  made: { dead: string; live: string; unlabelled: string },
): Promise<void> {
  const own = await reaper.acquire(sandboxSpec({ labels: ownershipLabels("reaping-worker", "j3") }), {});
  const asked: string[][] = [];
  const before = standin.requests.length;
  const n = await reaper.reap!({
    liveOwners: async (workers) => {
      asked.push([...workers].sort());
      return new Set(workers.filter((w) => w === "live-worker"));
    },
  });
  expect(n).toBe(1);
  expect(asked.flat()).toContain("dead-worker");
  expect(asked.flat()).not.toContain("reaping-worker");
  const ids = standin.sandboxList().map((s) => s.id);
  expect(ids).not.toContain(made.dead);
  expect(ids).toEqual(expect.arrayContaining([made.live, made.unlabelled, own.id]));
  // The reaper found them through the list call.
  expect(standin.requests.slice(before).some((q) => q.op === "list" && q.status === 200)).toBe(true);
  await own.release();
  await reaper.close();
}
