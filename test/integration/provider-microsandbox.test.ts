/**
 * The microsandbox provider through the microsandbox stand-in (JSON-RPC
 * server on 127.0.0.1, each sandbox a real local sandbox): the shared
 * contract suite, then idempotent create, reaping through the service's own
 * list call (sandbox.metrics.get), and the transport faults. Needs bubblewrap
 * and root like the local provider; fails, not skips, without them.
 */
import { mkdtemp, rm, rmdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { describeProviderContract } from "../../providers/contract.js";
import { LocalProvider } from "../../providers/local/index.js";
import { MicrosandboxProvider, type MicrosandboxProviderOptions } from "../../providers/microsandbox/index.js";
import { ownershipLabels, type SandboxSpec } from "../../providers/provider.js";
import { MicrosandboxStandin } from "../../standins/microsandbox/index.js";

let tmp: string;
let local: LocalProvider;
let standin: MicrosandboxStandin;
const providers: MicrosandboxProvider[] = [];

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "sandqueue-msb-test-"));
  local = new LocalProvider({ workRoot: tmp, cgroupParent: `sandqueue-test-msb-${process.pid}` });
  standin = await MicrosandboxStandin.start({ provider: local, images: { host: "host" }, defaultImage: null, pids: 64 });
});

afterAll(async () => {
  await Promise.allSettled(providers.map((p) => p.close()));
  await standin?.stop();
  await local?.close();
  for (const dir of local?.cgroupParentDirs ?? []) await rmdir(dir).catch(() => undefined);
  await rm(tmp, { recursive: true, force: true });
});

function makeProvider(over: Partial<MicrosandboxProviderOptions> = {}): MicrosandboxProvider {
  const p = new MicrosandboxProvider({
    url: standin.url,
    apiKey: standin.apiKey ?? undefined,
    namespace: "sandqueue",
    cpus: 1,
    requestTimeoutMs: 30_000,
    retries: 4,
    backoffMs: 20,
    owner: `test-worker-${providers.length}-${process.pid}`,
    ...over,
  });
  providers.push(p);
  return p;
}

let contractProvider: MicrosandboxProvider | undefined;
describeProviderContract(
  "microsandbox (stand-in)",
  async () => {
    contractProvider = makeProvider();
    return contractProvider;
  },
  { image: "host", listResources: () => contractProvider!.ownSandboxes(), memoryMb: 256, pids: 64, slackMs: 2000 },
);

const spec = (jobId?: string, attempt?: number, worker = "w"): SandboxSpec => ({
  image: "host",
  limits: { memoryMb: 128, pids: 32 },
  network: "none",
  labels: ownershipLabels(worker, jobId),
  annotations: {},
  maxLifetimeMs: 60_000,
  ...(attempt === undefined ? {} : { attempt }),
});

describe("microsandbox provider specifics", () => {
  it("names sandboxes from owner, job id and attempt: a create sent twice makes one sandbox", async () => {
    const p = makeProvider();
    const a = await p.acquire(spec("job-1", 1), {});
    const again = await p.acquire(spec("job-1", 1), {});
    expect(again.id).toBe(a.id);
    expect(await p.ownSandboxes()).toEqual([a.id]);
    // The same sandbox: what one wrote, the other sees.
    await a.exec({ argv: ["/bin/sh", "-c", "echo one > /workspace/f"], env: {}, timeoutMs: 10_000, maxOutputBytes: 1000 });
    const r = await again.exec({ argv: ["cat", "/workspace/f"], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 10_000, maxOutputBytes: 1000 });
    expect(r.stdout.toString()).toBe("one\n");
    const next = await p.acquire(spec("job-1", 2), {});
    expect(next.id).not.toBe(a.id);
    await Promise.all([a.release(), next.release()]);
    expect(await p.ownSandboxes()).toEqual([]);
  });

  it("a start answered 503 after the server made the sandbox is retried onto the same sandbox", async () => {
    const p = makeProvider();
    standin.faults.add({ match: { op: "sandbox.start" }, action: { type: "fail", code: 503 }, count: 2 });
    const box = await p.acquire(spec("job-503", 1), {});
    expect(await p.ownSandboxes()).toEqual([box.id]);
    await box.release();
  });

  it("reaps, through sandbox.metrics.get, the sandboxes of workers without a heartbeat, and only those", async () => {
    const dead = makeProvider({ owner: "dead-worker" });
    const alive = makeProvider({ owner: "alive-worker" });
    const reaper = makeProvider({ owner: "reaper-worker" });
    const d = await dead.acquire(spec("job-d", 1), {});
    const a = await alive.acquire(spec("job-a", 1), {});
    const own = await reaper.acquire(spec("job-r", 1), {});
    const liveLabels = new Set(["alive-worker", "reaper-worker"]);
    const owners = { liveOwners: async (l: readonly string[]) => new Set(l.filter((x) => liveLabels.has(x))), liveOwnerLabels: async () => liveLabels };
    expect(await reaper.reap(owners)).toBe(1);
    expect(await dead.ownSandboxes()).toEqual([]);
    expect(await alive.ownSandboxes()).toEqual([a.id]);
    expect(await reaper.ownSandboxes()).toEqual([own.id]);
    // Without a way to list live workers, nothing is reaped.
    expect(await reaper.reap({ liveOwners: async () => new Set() })).toBe(0);
    expect(await alive.ownSandboxes()).toEqual([a.id]);
    await Promise.all([a.release(), own.release(), d.release()]);
  });

  it("honours 429 Retry-After and retries 5xx bursts; 401 is PROVIDER_CREDENTIALS at once", async () => {
    const p = makeProvider();
    standin.faults.add({ match: { op: "sandbox.metrics.get" }, action: { type: "fail", code: 429, retryAfterSeconds: 1 } });
    const t0 = Date.now();
    await p.check();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(950);
    standin.faults.add({ match: { op: "sandbox.metrics.get" }, action: { type: "fail", code: 500 }, count: 3 });
    await expect(p.check()).resolves.toBeUndefined();
    standin.faults.add({ match: { op: "sandbox.metrics.get" }, action: { type: "fail", code: 502 }, count: 10 });
    await expect(p.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
    standin.faults.clear();
    const calls = standin.calls.length;
    const wrongKey = makeProvider({ apiKey: "wrong" });
    await expect(wrongKey.acquire(spec("job-401", 1), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
    expect(standin.calls.length).toBe(calls);
    await expect(wrongKey.acquire(spec("job-401", 1), {})).rejects.not.toThrow(/wrong/);
  });

  it("a slow server: requests past the request timeout are retried, then PROVIDER_UNAVAILABLE", async () => {
    const p = makeProvider({ requestTimeoutMs: 300, retries: 1 });
    standin.faults.add({ match: { op: "sandbox.metrics.get" }, action: { type: "delay", ms: 600 }, count: 1 });
    await expect(p.check()).resolves.toBeUndefined();
    standin.faults.add({ match: { op: "sandbox.metrics.get" }, action: { type: "delay", ms: 600 }, count: 2 });
    await expect(p.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
  });

  it("a command.run answered 500 is not sent again (it may have run)", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec("job-500", 1), {});
    standin.faults.add({ match: { op: "sandbox.command.run" }, action: { type: "fail", code: 500 } });
    const before = standin.calls.filter((c) => c === "sandbox.command.run").length;
    await expect(box.exec({ argv: ["true"], env: {}, timeoutMs: 10_000, maxOutputBytes: 100 })).rejects.toMatchObject({
      code: "SANDQ_ERR_PROVIDER_UNAVAILABLE",
      retryable: true,
    });
    expect(standin.calls.filter((c) => c === "sandbox.command.run").length).toBe(before + 1);
    await box.release();
  });

  it("a sandbox that disappears mid-exec is SANDBOX_LOST (retryable), and later calls say so", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec("job-vanish", 1), {});
    standin.faults.add({ match: { op: "sandbox.command.run", sandbox: box.id }, action: { type: "vanish", afterMs: 300 } });
    await expect(
      box.exec({ argv: ["/bin/sh", "-c", "echo started; sleep 20"], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 30_000, maxOutputBytes: 1000 }),
    ).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST", retryable: true });
    await expect(box.exec({ argv: ["true"], env: {}, timeoutMs: 1000, maxOutputBytes: 10 })).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST" });
    await box.release();
    expect(await p.ownSandboxes()).toEqual([]);
  });

  it("the wall time holds when the server does not answer: the sandbox is deleted", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec("job-hang", 1), {});
    standin.faults.add({ match: { op: "sandbox.command.run", sandbox: box.id }, action: { type: "delay", ms: 30_000 } });
    const t0 = Date.now();
    const r = await box.exec({ argv: ["true"], env: {}, timeoutMs: 500, maxOutputBytes: 100 });
    expect(r).toMatchObject({ limitHit: "timeout", exitCode: null, signal: "SIGKILL" });
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(await p.ownSandboxes()).toEqual([]);
    await box.release();
  });

  it("refuses stdin and path escapes before any request", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec("job-refuse", 1), {});
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
  });

  it("takes faults over HTTP (POST /standin/faults) and names a bad field", async () => {
    const p = makeProvider({ retries: 0 });
    const bad = await fetch(`${standin.url}/standin/faults`, { method: "POST", body: JSON.stringify({ action: { type: "fail", code: 418 } }) });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toMatch(/action\.code/);
    const ok = await fetch(`${standin.url}/standin/faults`, { method: "POST", body: JSON.stringify({ match: { op: "sandbox.metrics.get" }, action: { type: "fail", code: 503 } }) });
    expect(ok.status).toBe(200);
    await expect(p.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE" });
    await expect(p.check()).resolves.toBeUndefined();
  });
});
