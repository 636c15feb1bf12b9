/**
 * `sandqueue worker --provider e2b` on real Redis, pointed at the E2B
 * stand-in started as an operator would (`npm run standin -- e2b --env-file
 * FILE`): the demo's kinds of jobs end with the right statuses, jobs asking
 * what E2B cannot enforce are refused, a running job cancelled ends killed,
 * and the service's own list (the official SDK's Sandbox.list) holds
 * nothing afterwards; then a worker killed with -9 whose sandbox another
 * worker's reaper kills.
 */
import { describe, expect, it } from "vitest";
import { Sandbox, type SandboxInfo } from "e2b";
import { DEMO_JOBS } from "../../cli/demo-command.js";
import { labelSafe } from "../../providers/provider.js";
import { testClient, uniqueQueue } from "../support/harness.js";
import { until } from "../support/standin-process.js";
import { expectDemoOutcomes, expectKilledWorkerReaped, runDemoJobs, standinCreateCount, standinForWorkerFile, startProviderWorker } from "../support/remote-worker-cases.js";

const { env, workers } = standinForWorkerFile("e2b", "SANDQUEUE_E2B_API_KEY");

/** The service's own list, through the official SDK (every page). */
async function serviceList(): Promise<SandboxInfo[]> {
  // apiUrl is an @internal option in the SDK's types, honoured at run time by every call.
  const conn = { apiKey: env.SANDQUEUE_E2B_API_KEY!, apiUrl: env.SANDQUEUE_E2B_API_URL! };
  const pages = Sandbox.list(conn);
  const out: SandboxInfo[] = [];
  while (pages.hasNext) out.push(...(await pages.nextItems()));
  return out;
}

const createCount = () => standinCreateCount(env.SANDQUEUE_E2B_API_URL!, env.SANDQUEUE_E2B_API_KEY!);
/** The job's sandboxes in the service's own list. */
const ofJob = async (jobId: string) => (await serviceList()).filter((s) => s.metadata["sandqueue.io/job"] === labelSafe(jobId));

describe("worker --provider e2b through the stand-in", () => {
  it("runs the demo's jobs and a cancelled one with the right statuses, and leaves no sandbox in the service's list", async () => {
    const queue = uniqueQueue("e2b");
    const createsBefore = await createCount();
    const worker = await startProviderWorker(queue, env, "e2b", 2, workers);
    const client = testClient(queue);
    try {
      // No per-sandbox memory or pids limit on E2B: jobs asking for one are refused, not run without it.
      expectDemoOutcomes((await runDemoJobs(client, 90_000)).byTitle, "e2b", "refused");

      // A running job cancelled: killed/cancelled, its sandbox gone.
      const long = await client.enqueue({ kind: "shell", script: "echo started; sleep 60", limits: { timeoutMs: 120_000 } });
      await until("the long job's sandbox", async () => (await ofJob(long.id)).length === 1);
      expect(await client.cancel(long.id)).toBe(true);
      const cancelled = await client.waitForResult(long.id, { timeoutMs: 30_000 });
      expect(cancelled).toMatchObject({ status: "killed", reason: "cancelled" });
      await until("the cancelled job's sandbox to go", async () => (await ofJob(long.id)).length === 0);
    } finally {
      await client.close();
    }
    // Every job but the two refused ones got a sandbox of its own.
    expect((await createCount()) - createsBefore).toBe(DEMO_JOBS.length - 2 + 1);
    await worker.stop("SIGTERM");
    expect(await serviceList()).toEqual([]);
  }, 150_000);

  it("a worker killed with -9 leaves its sandbox; another worker's reaper kills it through the list call", async () => {
    await expectKilledWorkerReaped({ env, provider: "e2b", workers, held: async (jobId) => (await ofJob(jobId)).length });
  }, 120_000);
});
