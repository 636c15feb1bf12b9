/**
 * The provisioner provider through the deer-flow provisioner stand-in
 * (/api/sandboxes on 127.0.0.1, an AIO sandbox API per sandbox on its own
 * port, each sandbox a real local sandbox): the shared contract suite, then
 * idempotent create, readiness, reaping through GET /api/sandboxes, and the
 * transport faults. Needs bubblewrap and root like the local provider.
 */
import { describe, expect, it } from "vitest";
import { describeProviderContract } from "../../providers/contract.js";
import type { LocalProvider } from "../../providers/local/index.js";
import { ProvisionerProvider, type ProvisionerProviderOptions } from "../../providers/provisioner/index.js";
import { ProvisionerStandin } from "../../standins/provisioner/index.js";
import { localStandinForFile } from "../support/local-standin.js";
import * as cases from "../support/service-fault-cases.js";

let standin: ProvisionerStandin;
const providers: ProvisionerProvider[] = [];
let local: LocalProvider;
localStandinForFile(
  "prov-test",
  async (l) => {
    local = l; // the readiness case starts a second, slow stand-in on it
    return (standin = await ProvisionerStandin.start({ provider: local, image: "host", memoryMb: 512, pids: 64, sandboxApiKey: "aio-key" }));
  },
  () => Promise.allSettled(providers.map((p) => p.close())),
);

function makeProvider(over: Partial<ProvisionerProviderOptions> = {}): ProvisionerProvider {
  const p = new ProvisionerProvider({
    url: standin.url,
    apiKey: standin.apiKey ?? undefined,
    sandboxApiKey: "aio-key",
    images: ["host"],
    requestTimeoutMs: 30_000,
    retries: 4,
    readyTimeoutMs: 30_000,
    pollMs: 50,
    backoffMs: 20,
    owner: `test-worker-${providers.length}-${process.pid}`,
    ...over,
  });
  providers.push(p);
  return p;
}

let contractProvider: ProvisionerProvider | undefined;
describeProviderContract(
  "provisioner (stand-in)",
  async () => {
    contractProvider = makeProvider();
    return contractProvider;
  },
  { image: "host", listResources: () => contractProvider!.ownSandboxes(), memoryMb: 256, pids: 64, slackMs: 2000 },
);

const spec = cases.attemptSpec;


describe("provisioner provider specifics", () => {
  it("names sandboxes from owner, job id and attempt: a create sent twice makes one sandbox", async () => {
    await cases.expectCreateIdempotentByName(makeProvider());
  });

  it("waits for readiness (GET /v1/sandbox) of a sandbox that stays Pending, and fails retryable when it never gets ready", async () => {
    const slow = await ProvisionerStandin.start({ provider: local, image: "host", startDelayMs: 800 });
    try {
      const p = makeProvider({ url: slow.url, apiKey: slow.apiKey ?? undefined, sandboxApiKey: undefined });
      const t0 = Date.now();
      const box = await p.acquire(spec("job-slow", 1), {});
      expect(Date.now() - t0).toBeGreaterThanOrEqual(700);
      expect((await box.exec({ argv: ["true"], env: {}, timeoutMs: 10_000, maxOutputBytes: 10 })).exitCode).toBe(0);
      await box.release();
      const impatient = makeProvider({ url: slow.url, apiKey: slow.apiKey ?? undefined, sandboxApiKey: undefined, readyTimeoutMs: 1000 });
      slow.faults.add({ match: { op: "ready" }, action: { type: "fail", code: 503 }, count: 1000 });
      await expect(impatient.acquire(spec("job-never", 1), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
      expect(slow.sandboxes()).toEqual([]);
    } finally {
      await slow.stop();
    }
  });

  it("a create answered 503 is retried onto the same sandbox", async () => {
    const p = makeProvider();
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 503 }, count: 2 });
    const box = await p.acquire(spec("job-503", 1), {});
    expect(await p.ownSandboxes()).toEqual([box.id]);
    await box.release();
  });

  it("reaps, through GET /api/sandboxes, the sandboxes of workers without a heartbeat, and only those", async () => {
    await cases.expectDeadWorkersReapedOnly(makeProvider, spec);
  });

  it("honours 429 Retry-After and retries 5xx bursts; 401 is PROVIDER_CREDENTIALS at once", async () => {
    const p = makeProvider();
    await cases.expectRateLimitAndBurstsRetried(p, standin, "list");
    standin.faults.clear();
    const calls = standin.calls.length;
    const wrongKey = makeProvider({ apiKey: "wrong" });
    const err = await wrongKey.acquire(spec("job-401", 1), {}).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
    expect((err as Error).message).not.toContain("wrong");
    expect(standin.calls.length).toBe(calls);
    const wrongSandboxKey = makeProvider({ sandboxApiKey: "wrong" });
    await expect(wrongSandboxKey.acquire(spec("job-401b", 1), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS" });
    expect(await wrongSandboxKey.ownSandboxes()).toEqual([]);
  });

  it("a slow provisioner: requests past the request timeout are retried, then PROVIDER_UNAVAILABLE", async () => {
    await cases.expectSlowAnswersRetried(makeProvider({ requestTimeoutMs: 300, retries: 1 }), standin, "list");
  });

  it("a bash/exec answered 500 is not sent again (it may have run)", async () => {
    await cases.expectFailedCommandNotResent(makeProvider(), standin, spec("job-500", 1), "exec");
  });

  it("a sandbox that disappears mid-exec is SANDBOX_LOST (retryable), and later calls say so", async () => {
    await cases.expectVanishedSandboxLost(makeProvider(), standin, spec("job-vanish", 1), "exec");
  });

  it("the wall time holds when the sandbox does not answer: the sandbox is deleted", async () => {
    await cases.expectWallTimeWithoutAnswer(makeProvider(), standin, spec("job-hang", 1), "exec");
  });

  it("refuses other images, stdin and path escapes before any request", async () => {
    const p = makeProvider();
    const calls0 = standin.calls.length;
    await expect(p.acquire({ ...spec("job-img", 1), image: "python:3.12" }, {})).rejects.toMatchObject({ code: "SANDQ_ERR_IMAGE_NOT_FOUND", retryable: false });
    expect(standin.calls.length).toBe(calls0);
    await cases.expectStdinAndPathEscapesRefused(p, standin, spec("job-refuse", 1));
  });

  it("takes faults over HTTP (POST /standin/faults) and names a bad field", async () => {
    await cases.expectFaultsOverHttp(makeProvider({ retries: 0 }), standin, "list");
  });
});
