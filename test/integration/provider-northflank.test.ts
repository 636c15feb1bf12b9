/**
 * The northflank provider (providers/northflank, on @northflank/js-client)
 * against the Northflank stand-in (standins/northflank), whose instances are
 * real bubblewrap sandboxes: the provider contract suite in both modes
 * (ephemeral services; leased instances of an attached service), faults
 * (5xx bursts, a lost create answer, 429, 401, an exec upgrade refused, an
 * instance gone mid-job), the ownership rules (an attached service survives
 * release, cancel and a reaper run, exactly as it was; ephemeral services
 * are reaped through the SDK's list call once their owner is dead) and one
 * job per attached instance across providers. Needs root and bubblewrap;
 * fails, never skips, without them.
 */
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { filesToTar } from "../../providers/archive/index.js";
import { describeProviderContract } from "../../providers/contract.js";
import { ownershipLabels, type ExecRequest, type OwnerLiveness, type SandboxSpec } from "../../providers/provider.js";
import { NorthflankProvider, type NorthflankProviderOptions } from "../../providers/northflank/index.js";
import { NorthflankStandin } from "../../standins/northflank/index.js";
import { localStandinForFile } from "../support/local-standin.js";
import { providerForSuite } from "../support/sdk-provider-cases.js";

let standin: NorthflankStandin;
localStandinForFile("northflank-prov", async (local) =>
  (standin = await NorthflankStandin.start({
    provider: local,
    attach: [
      { id: "contract-shared", instances: 3 },
      { id: "kept", instances: 2 },
      { id: "solo", instances: 1 },
    ],
  })),
);

function makeProvider(over: Partial<NorthflankProviderOptions> = {}): NorthflankProvider {
  return new NorthflankProvider({
    token: standin.token,
    baseUrl: standin.url,
    projectId: standin.projectId,
    mode: "ephemeral",
    deploymentPlan: "nf-compute-20",
    images: { host: "python:3.12-slim" },
    tags: [],
    owner: "worker-under-test",
    createTimeoutMs: 20_000,
    requestTimeoutMs: 10_000,
    retries: 3,
    backoffMs: 20,
    rateLimitWaitMs: 100,
    ...over,
  });
}

const attached = (serviceId: string, owner = "worker-under-test") => makeProvider({ mode: "attach", serviceId, owner });

function spec(job = "job-1", over: Partial<SandboxSpec> = {}): SandboxSpec {
  return {
    image: "host",
    limits: { memoryMb: 256, pids: 64 },
    network: "none",
    labels: ownershipLabels("worker-under-test", job),
    annotations: {},
    maxLifetimeMs: 600_000,
    ...over,
  };
}

const sh = (script: string, over: Partial<ExecRequest> = {}): ExecRequest => ({
  argv: ["/bin/sh", "-c", script],
  env: { PATH: "/usr/bin:/bin" },
  timeoutMs: 20_000,
  maxOutputBytes: 1 << 20,
  ...over,
});

/** Leases held on a service's instances (the stand-in's secret groups, by their description). */
const leasesOf = (serviceId: string) => standin.secretList().filter((s) => s.description?.includes(`"service":"${serviceId}"`));

/** What the service's own view says of an attached service, plus what its instances' workspaces hold. */
async function stateOf(serviceId: string): Promise<unknown> {
  const s = standin.serviceList().find((x) => x.id === serviceId);
  return { service: s, files: await standin.instanceFiles(serviceId), leases: leasesOf(serviceId) };
}

const deadOwners = (alive: string[] = []): OwnerLiveness & { liveOwnerLabels(): Promise<ReadonlySet<string>> } => ({
  liveOwners: async (labels) => new Set(labels.filter((l) => alive.includes(l))),
  liveOwnerLabels: async () => new Set(alive),
});

/** The contract suite's services (its sandboxes carry the label sandqueue.test=contract). */
const contractServices = async (): Promise<string[]> =>
  standin
    .serviceList()
    .filter((s) => s.description?.includes('"sandqueue.test":"contract"'))
    .map((s) => s.id)
    .sort();

describeProviderContract("northflank ephemeral (stand-in)", async () => makeProvider(), { image: "host", listResources: contractServices });

// The exec shim's path (what instances with a network interface get): its own contract run.
describeProviderContract("northflank ephemeral, exec shim (stand-in)", async () => makeProvider({ exec: "shim" }), { image: "host", listResources: contractServices });

describeProviderContract("northflank attach (stand-in)", async () => attached("contract-shared"), {
  image: "host",
  missingImage: "sandqueue-contract-no-such-image",
  // A lease held, or anything a job left in an instance's workspace.
  listResources: async () => [
    ...leasesOf("contract-shared").map((l) => `lease ${l.name}`),
    ...Object.entries(await standin.instanceFiles("contract-shared")).flatMap(([i, files]) => files.map((f) => `${i}:${f}`)),
  ],
});

/** Services of a job label in the service's own list. */
const ofJob = (job: string) => standin.serviceList().filter((s) => s.description?.includes(`"sandqueue.io/job":"${job}"`));
const requestsSince = (n: number) => standin.requests.slice(n);

describe("northflank provider: ephemeral services and faults", () => {
  let provider: NorthflankProvider;
  providerForSuite(() => (provider = makeProvider()), () => standin.faults.clear());

  it("creates a deployment service named for its owner and job, marked as sandqueue's, from the mapped image; release deletes it", async () => {
    const box = await provider.acquire(spec("job-labels"), {});
    const [s] = ofJob("job-labels");
    expect(s).toMatchObject({ id: box.id, deployment: "COMPLETED", precreated: false });
    expect(s!.id).toMatch(/^sq-[0-9a-f]{10}-[0-9a-f]{12}-a1$/);
    expect(s!.description).toMatch(/^sandqueue ephemeral sandbox; /);
    expect(s!.description).toContain('"sandqueue.io/worker":"worker-under-test"');
    expect(box.ownedByClient).toBe(true);
    expect((await box.exec(sh("echo hi; echo err >&2; exit 4"))).stdout.toString()).toBe("hi\n");
    await box.release();
    expect(ofJob("job-labels")).toEqual([]);
  });

  it("a 5xx burst on create is retried; a create whose answer was lost is adopted by its name (409), not made twice", async () => {
    standin.faults.add({ match: { op: "create-service" }, action: { type: "fail", code: 502 }, count: 2 });
    const a = await provider.acquire(spec("job-burst"), {});
    expect(ofJob("job-burst").map((s) => s.id)).toEqual([a.id]);
    await a.release();

    const before = standin.requests.length;
    standin.faults.add({ match: { op: "create-service" }, action: { type: "lose", code: 503 } });
    const b = await provider.acquire(spec("job-lost"), {});
    expect(ofJob("job-lost").map((s) => s.id)).toEqual([b.id]);
    const creates = requestsSince(before).filter((q) => q.op === "create-service").map((q) => q.status);
    expect(creates).toEqual([503, 409]);
    expect((await b.exec(sh("echo adopted"))).stdout.toString()).toBe("adopted\n");
    await b.release();
    expect(ofJob("job-lost")).toEqual([]);
  });

  it("429 waits and retries; past the retries it is PROVIDER_RATE_LIMITED; 401 is credentials refused at once", async () => {
    standin.faults.add({ match: { op: "create-service" }, action: { type: "fail", code: 429 } });
    const a = await provider.acquire(spec("job-429"), {});
    await a.release();
    const quick = makeProvider({ retries: 1 });
    standin.faults.add({ match: { op: "create-service" }, action: { type: "fail", code: 429 }, count: 5 });
    await expect(quick.acquire(spec("job-429b"), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_RATE_LIMITED", retryable: true });
    standin.faults.clear();

    const before = standin.requests.length;
    const bad = makeProvider({ token: "nf-not-the-token" });
    await expect(bad.acquire(spec("job-401"), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
    expect(requestsSince(before).filter((q) => q.op === "create-service")).toHaveLength(1);
    await expect(bad.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS" });
    // The token is in no message.
    const err = await bad.check().catch((e: Error) => e);
    expect(String((err as Error).message)).not.toContain("nf-not-the-token");
    expect(ofJob("job-401")).toEqual([]);
    await quick.close();
  });

  it("an exec whose socket upgrade is refused (503) is PROVIDER_UNAVAILABLE, retryable; the next exec works", async () => {
    const box = await provider.acquire(spec("job-503"), {});
    standin.faults.add({ match: { op: "exec", service: box.id }, action: { type: "fail", code: 503 } });
    await expect(box.exec(sh("echo x"))).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
    expect((await box.exec(sh("echo y"))).stdout.toString()).toBe("y\n");
    await box.release();
  });

  it("an instance gone mid-job is SANDBOX_LOST (retryable); release still deletes the service", async () => {
    const box = await provider.acquire(spec("job-vanish"), {});
    standin.faults.add({ match: { op: "exec", service: box.id }, action: { type: "vanish", afterMs: 300 } });
    const t0 = Date.now();
    await expect(box.exec(sh("sleep 30", { timeoutMs: 60_000 }))).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST", retryable: true });
    expect(Date.now() - t0).toBeLessThan(10_000);
    await box.release();
    expect(ofJob("job-vanish")).toEqual([]);
  });

  it("archive paths that escape the workspace are refused before any request", async () => {
    const box = await provider.acquire(spec("job-escape"), {});
    const before = standin.requests.length;
    for (const dir of ["../etc", "/etc", "/workspace/../etc", "a/../../b"]) {
      await expect(box.putArchive(dir, Readable.from([Buffer.alloc(1024)]))).rejects.toThrow();
      await expect(box.getArchive(dir)).rejects.toThrow();
    }
    expect(requestsSince(before)).toEqual([]);
    await box.release();
  });

  it("a reaper deletes, through the SDK's list call, ephemeral services whose owner is dead, and only those", async () => {
    const dead = makeProvider({ owner: "dead-worker" });
    const alive = makeProvider({ owner: "live-worker" });
    const d = await dead.acquire({ ...spec("job-dead"), labels: ownershipLabels("dead-worker", "job-dead") }, {});
    const a = await alive.acquire({ ...spec("job-alive"), labels: ownershipLabels("live-worker", "job-alive") }, {});
    const reaper = makeProvider({ owner: "reaper-worker" });
    const n = await reaper.reap(deadOwners(["live-worker", "reaper-worker"]));
    expect(n).toBe(1);
    expect(ofJob("job-dead")).toEqual([]);
    expect(ofJob("job-alive").map((s) => s.id)).toEqual([a.id]);
    // Without a way to list live workers, nothing is reaped.
    expect(await reaper.reap({ liveOwners: async () => new Set() })).toBe(0);
    await Promise.all([a.release(), d.release()]);
    await Promise.all([dead.close(), alive.close(), reaper.close()]);
  });
});

describe("northflank provider: an attached service is never sandqueue's", () => {
  it("survives release and cancel exactly as it was: no leftover file, no lease, never deleted", async () => {
    const before = await stateOf("kept");
    const provider = attached("kept");
    const box = await provider.acquire(spec("job-kept"), {});
    expect(box.ownedByClient).toBe(false);
    expect(box.id).toMatch(/^kept\//);
    expect(leasesOf("kept")).toHaveLength(1);
    await box.exec(sh("mkdir -p d/e && echo x > d/e/f && echo y > .hidden && chmod 000 d"));
    await box.putArchive("/workspace/in", filesToTar({ "a.txt": "a" }));
    await box.release();
    expect(await stateOf("kept")).toEqual(before);

    // Cancel: the job is aborted mid-run, its socket closed; release empties the instance.
    const again = await provider.acquire(spec("job-kept-2"), {});
    const ctl = new AbortController();
    const pending = again.exec(sh("echo partial > p; sleep 30", { signal: ctl.signal, timeoutMs: 60_000 }));
    await new Promise((r) => setTimeout(r, 500));
    ctl.abort();
    expect((await pending).limitHit).toBe("aborted");
    await again.release();
    expect(await stateOf("kept")).toEqual(before);
    await provider.close();
    expect(await stateOf("kept")).toEqual(before);
  });

  it("a reaper run leaves it as it was: a dead holder's lease is broken and its workspace emptied, the service untouched", async () => {
    const before = await stateOf("kept");
    const holder = attached("kept", "dead-holder");
    const box = await holder.acquire({ ...spec("job-orphan"), labels: ownershipLabels("dead-holder", "job-orphan") }, {});
    await box.exec(sh("echo orphan > left-behind"));
    // The holder dies here (never releases).
    const reaper = attached("kept", "reaper-worker");
    // While the holder lives, nothing is touched.
    expect(await reaper.reap(deadOwners(["dead-holder", "reaper-worker"]))).toBe(0);
    expect(leasesOf("kept")).toHaveLength(1);
    expect(await reaper.reap(deadOwners(["reaper-worker"]))).toBe(1);
    expect(await stateOf("kept")).toEqual(before);
    // Deleting it is refused before any request, whoever asks.
    const n = standin.requests.length;
    await expect(reaper.deleteService("kept")).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
    await expect(makeProvider().deleteService("kept")).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
    expect(requestsSince(n)).toEqual([]);
    await reaper.close();
  });

  it("one job per instance: a second worker waits for the only instance and gets it once it is released", async () => {
    const a = attached("solo", "worker-a");
    const b = attached("solo", "worker-b");
    const first = await a.acquire(spec("job-a"), {});
    let got = false;
    const second = b.acquire(spec("job-b"), {}).then((s) => {
      got = true;
      return s;
    });
    await new Promise((r) => setTimeout(r, 700));
    expect(got).toBe(false);
    await first.exec(sh("echo mine > f"));
    await first.release();
    const s2 = await second;
    expect((await s2.exec(sh("ls -A /workspace"))).stdout.toString()).toBe("");
    await s2.release();
    // Waiting has an end: all instances busy past createTimeoutMs is retryable PROVIDER_UNAVAILABLE.
    const held = await a.acquire(spec("job-a2"), {});
    const impatient = makeProvider({ mode: "attach", serviceId: "solo", owner: "worker-c", createTimeoutMs: 1000 });
    await expect(impatient.acquire(spec("job-c"), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
    await held.release();
    expect(leasesOf("solo")).toEqual([]);
    await Promise.all([a.close(), b.close(), impatient.close()]);
  });
});
