/**
 * Fault cases of the same shape for providers that speak to their service
 * in one request per call (microsandbox's JSON-RPC, the provisioner's REST):
 * each takes the stand-in, a provider factory and the operation name the
 * stand-in's fault table knows the call by.
 */
import { Readable } from "node:stream";
import { expect } from "vitest";
import { ownershipLabels, type OwnerLiveness, type SandboxProvider, type SandboxSpec } from "../../providers/provider.js";

/** The fault actions these cases arm (every such stand-in's fault table knows them). */
type FaultAction = { type: "fail"; code: number; retryAfterSeconds?: number } | { type: "delay"; ms: number } | { type: "vanish"; afterMs: number };

/** What these cases need of a stand-in: its URL, the ops it served, its fault table. */
export interface FaultyStandin {
  readonly url: string;
  readonly calls: string[];
  readonly faults: {
    add(f: { match: { op: string; sandbox?: string }; action: FaultAction; count?: number }): unknown;
  };
}

/** A provider that can list its own sandboxes (for the "nothing left" checks). */
export type ListingProvider = SandboxProvider & { ownSandboxes(): Promise<string[]> };

/** 429 is waited out (Retry-After), a 5xx burst retried, 5xx past the retries is PROVIDER_UNAVAILABLE. */
export async function expectRateLimitAndBurstsRetried(p: ListingProvider, standin: FaultyStandin, op: string): Promise<void> {
  standin.faults.add({ match: { op }, action: { type: "fail", code: 429, retryAfterSeconds: 1 } });
  const t0 = Date.now();
  await p.check();
  expect(Date.now() - t0).toBeGreaterThanOrEqual(950);
  standin.faults.add({ match: { op }, action: { type: "fail", code: 500 }, count: 3 });
  await expect(p.check()).resolves.toBeUndefined();
  standin.faults.add({ match: { op }, action: { type: "fail", code: 502 }, count: 10 });
  await expect(p.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
}

/** With requestTimeoutMs 300 and one retry: one slow answer is retried, two are PROVIDER_UNAVAILABLE. */
export async function expectSlowAnswersRetried(p: ListingProvider, standin: FaultyStandin, op: string): Promise<void> {
  standin.faults.add({ match: { op }, action: { type: "delay", ms: 600 }, count: 1 });
  await expect(p.check()).resolves.toBeUndefined();
  standin.faults.add({ match: { op }, action: { type: "delay", ms: 600 }, count: 2 });
  await expect(p.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
}

/** A command answered 500 may have run: it is not sent again. */
export async function expectFailedCommandNotResent(p: ListingProvider, standin: FaultyStandin, spec: SandboxSpec, op: string): Promise<void> {
  const box = await p.acquire(spec, {});
  standin.faults.add({ match: { op }, action: { type: "fail", code: 500 } });
  const before = standin.calls.filter((c) => c === op).length;
  await expect(box.exec({ argv: ["true"], env: {}, timeoutMs: 10_000, maxOutputBytes: 100 })).rejects.toMatchObject({
    code: "SANDQ_ERR_PROVIDER_UNAVAILABLE",
    retryable: true,
  });
  expect(standin.calls.filter((c) => c === op).length).toBe(before + 1);
  await box.release();
}

/** A sandbox gone mid-exec is SANDBOX_LOST (retryable), and so is every later call. */
export async function expectVanishedSandboxLost(p: ListingProvider, standin: FaultyStandin, spec: SandboxSpec, op: string): Promise<void> {
  const box = await p.acquire(spec, {});
  standin.faults.add({ match: { op, sandbox: box.id }, action: { type: "vanish", afterMs: 300 } });
  await expect(
    box.exec({ argv: ["/bin/sh", "-c", "echo started; sleep 20"], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 30_000, maxOutputBytes: 1000 }),
  ).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST", retryable: true });
  await expect(box.exec({ argv: ["true"], env: {}, timeoutMs: 1000, maxOutputBytes: 10 })).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST" });
  await box.release();
  expect(await p.ownSandboxes()).toEqual([]);
}

/** An exec the service never answers ends at its wall time (SIGKILL) and its sandbox is deleted. */
export async function expectWallTimeWithoutAnswer(p: ListingProvider, standin: FaultyStandin, spec: SandboxSpec, op: string): Promise<void> {
  const box = await p.acquire(spec, {});
  standin.faults.add({ match: { op, sandbox: box.id }, action: { type: "delay", ms: 30_000 } });
  const t0 = Date.now();
  const r = await box.exec({ argv: ["true"], env: {}, timeoutMs: 500, maxOutputBytes: 100 });
  expect(r).toMatchObject({ limitHit: "timeout", exitCode: null, signal: "SIGKILL" });
  expect(Date.now() - t0).toBeLessThan(15_000);
  expect(await p.ownSandboxes()).toEqual([]);
  await box.release();
}

/** POST /standin/faults names a bad field (400) and arms a good fault, which the next call (retries 0) meets once. */
export async function expectFaultsOverHttp(p: ListingProvider, standin: FaultyStandin, op: string): Promise<void> {
  const bad = await fetch(`${standin.url}/standin/faults`, { method: "POST", body: JSON.stringify({ action: { type: "fail", code: 418 } }) });
  expect(bad.status).toBe(400);
  expect(((await bad.json()) as { error: string }).error).toMatch(/action\.code/);
  const ok = await fetch(`${standin.url}/standin/faults`, { method: "POST", body: JSON.stringify({ match: { op }, action: { type: "fail", code: 503 } }) });
  expect(ok.status).toBe(200);
  await expect(p.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE" });
  await expect(p.check()).resolves.toBeUndefined();
}

/**
 * Three workers' sandboxes, one worker dead: the reaper deletes the dead
 * one's sandbox only; without a way to list live workers it reaps nothing.
 */
export async function expectDeadWorkersReapedOnly(
  make: (over: { owner: string }) => ListingProvider,
  spec: (jobId: string, attempt: number) => SandboxSpec,
): Promise<void> {
  const dead = make({ owner: "dead-worker" });
  const alive = make({ owner: "alive-worker" });
  const reaper = make({ owner: "reaper-worker" });
  const d = await dead.acquire(spec("job-d", 1), {});
  const a = await alive.acquire(spec("job-a", 1), {});
  const own = await reaper.acquire(spec("job-r", 1), {});
  const liveLabels = new Set(["alive-worker", "reaper-worker"]);
  const owners: OwnerLiveness & { liveOwnerLabels(): Promise<ReadonlySet<string>> } = { liveOwners: async (l: readonly string[]) => new Set(l.filter((x) => liveLabels.has(x))), liveOwnerLabels: async () => liveLabels };
  expect(await reaper.reap!(owners)).toBe(1);
  expect(await dead.ownSandboxes()).toEqual([]);
  expect(await alive.ownSandboxes()).toEqual([a.id]);
  expect(await reaper.ownSandboxes()).toEqual([own.id]);
  // Without a way to list live workers, nothing is reaped.
  expect(await reaper.reap!({ liveOwners: async () => new Set() })).toBe(0);
  expect(await alive.ownSandboxes()).toEqual([a.id]);
  await Promise.all([a.release(), own.release(), d.release()]);
}

/** stdin (not a capability) and archive paths outside the workspace are refused before any request. */
export async function expectStdinAndPathEscapesRefused(p: ListingProvider, standin: FaultyStandin, spec: SandboxSpec): Promise<void> {
  const box = await p.acquire(spec, {});
  const calls = standin.calls.length;
  await expect(box.exec({ argv: ["cat"], env: {}, stdin: "x", timeoutMs: 1000, maxOutputBytes: 10 })).rejects.toMatchObject({
    code: "SANDQ_ERR_CAPABILITY_UNSUPPORTED",
  });
  for (const dir of ["/etc", "/workspace/../etc", "relative"]) {
    await expect(box.putArchive(dir, Readable.from([Buffer.alloc(1024)]))).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
    await expect(box.getArchive(dir)).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
  }
  expect(standin.calls.length).toBe(calls);
  await box.release();
}

/** The spec these providers' tests acquire with: a job id and attempt (their sandbox name), 128 MiB, 32 pids, 60 s. */
export const attemptSpec = (jobId?: string, attempt?: number, worker = "w"): SandboxSpec => ({
  image: "host",
  limits: { memoryMb: 128, pids: 32 },
  network: "none",
  labels: ownershipLabels(worker, jobId),
  annotations: {},
  maxLifetimeMs: 60_000,
  ...(attempt === undefined ? {} : { attempt }),
});

/** A create sent twice for one job and attempt makes one sandbox (named from owner, job id and attempt); the next attempt another. */
export async function expectCreateIdempotentByName(p: ListingProvider): Promise<void> {
  const a = await p.acquire(attemptSpec("job-1", 1), {});
  const again = await p.acquire(attemptSpec("job-1", 1), {});
  expect(again.id).toBe(a.id);
  expect(await p.ownSandboxes()).toEqual([a.id]);
  // The same sandbox: what one wrote, the other sees.
  await a.exec({ argv: ["/bin/sh", "-c", "echo one > /workspace/f"], env: {}, timeoutMs: 10_000, maxOutputBytes: 1000 });
  const r = await again.exec({ argv: ["cat", "/workspace/f"], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 10_000, maxOutputBytes: 1000 });
  expect(r.stdout.toString()).toBe("one\n");
  const next = await p.acquire(attemptSpec("job-1", 2), {});
  expect(next.id).not.toBe(a.id);
  await Promise.all([a.release(), next.release()]);
  expect(await p.ownSandboxes()).toEqual([]);
}
