/**
 * The microsandbox provider through the microsandbox stand-in (JSON-RPC
 * server on 127.0.0.1, each sandbox a real local sandbox): the shared
 * contract suite, then idempotent create, reaping through the service's own
 * list call (sandbox.metrics.get), and the transport faults. Needs bubblewrap
 * and root like the local provider; fails, not skips, without them.
 */
import { describe, expect, it } from "vitest";
import { describeProviderContract } from "../../providers/contract.js";
import { MicrosandboxProvider, type MicrosandboxProviderOptions } from "../../providers/microsandbox/index.js";
import { MicrosandboxStandin } from "../../standins/microsandbox/index.js";
import { localStandinForFile } from "../support/local-standin.js";
import * as cases from "../support/service-fault-cases.js";

let standin: MicrosandboxStandin;
const providers: MicrosandboxProvider[] = [];
localStandinForFile("msb-test", async (local) => (standin = await MicrosandboxStandin.start({ provider: local, images: { host: "host" }, defaultImage: null, pids: 64 })), () => Promise.allSettled(providers.map((p) => p.close())));

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

const spec = cases.attemptSpec;


describe("microsandbox provider specifics", () => {
  it("names sandboxes from owner, job id and attempt: a create sent twice makes one sandbox", async () => {
    await cases.expectCreateIdempotentByName(makeProvider());
  });

  it("a start answered 503 after the server made the sandbox is retried onto the same sandbox", async () => {
    const p = makeProvider();
    standin.faults.add({ match: { op: "sandbox.start" }, action: { type: "fail", code: 503 }, count: 2 });
    const box = await p.acquire(spec("job-503", 1), {});
    expect(await p.ownSandboxes()).toEqual([box.id]);
    await box.release();
  });

  it("reaps, through sandbox.metrics.get, the sandboxes of workers without a heartbeat, and only those", async () => {
    await cases.expectDeadWorkersReapedOnly(makeProvider, spec);
  });

  it("honours 429 Retry-After and retries 5xx bursts; 401 is PROVIDER_CREDENTIALS at once", async () => {
    const p = makeProvider();
    await cases.expectRateLimitAndBurstsRetried(p, standin, "sandbox.metrics.get");
    standin.faults.clear();
    const calls = standin.calls.length;
    const wrongKey = makeProvider({ apiKey: "wrong" });
    await expect(wrongKey.acquire(spec("job-401", 1), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
    expect(standin.calls.length).toBe(calls);
    await expect(wrongKey.acquire(spec("job-401", 1), {})).rejects.not.toThrow(/wrong/);
  });

  it("a slow server: requests past the request timeout are retried, then PROVIDER_UNAVAILABLE", async () => {
    await cases.expectSlowAnswersRetried(makeProvider({ requestTimeoutMs: 300, retries: 1 }), standin, "sandbox.metrics.get");
  });

  it("a command.run answered 500 is not sent again (it may have run)", async () => {
    await cases.expectFailedCommandNotResent(makeProvider(), standin, spec("job-500", 1), "sandbox.command.run");
  });

  it("a sandbox that disappears mid-exec is SANDBOX_LOST (retryable), and later calls say so", async () => {
    await cases.expectVanishedSandboxLost(makeProvider(), standin, spec("job-vanish", 1), "sandbox.command.run");
  });

  it("the wall time holds when the server does not answer: the sandbox is deleted", async () => {
    await cases.expectWallTimeWithoutAnswer(makeProvider(), standin, spec("job-hang", 1), "sandbox.command.run");
  });

  it("refuses stdin and path escapes before any request", async () => {
    const p = makeProvider();
    await cases.expectStdinAndPathEscapesRefused(p, standin, spec("job-refuse", 1));
  });

  it("takes faults over HTTP (POST /standin/faults) and names a bad field", async () => {
    await cases.expectFaultsOverHttp(makeProvider({ retries: 0 }), standin, "sandbox.metrics.get");
  });
});
