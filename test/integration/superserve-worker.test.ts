/**
 * `sandqueue worker --provider superserve` on real Redis, pointed at the
 * Superserve stand-in started as an operator would (`npm run standin --
 * superserve --env-file FILE`): the demo's kinds of jobs end with the right
 * statuses, jobs asking what Superserve cannot enforce are refused, and the
 * service's own list (the SDK's Sandbox.list) holds nothing afterwards; then
 * the same with warm reuse (pause on release), and a worker killed with -9
 * whose sandbox another worker's reaper deletes.
 */
import { describe, expect, it } from "vitest";
import { Sandbox } from "@superserve/sdk";
import { DEMO_JOBS } from "../../cli/demo-command.js";
import { labelSafe } from "../../providers/provider.js";
import { testClient, uniqueQueue } from "../support/harness.js";
import { until } from "../support/standin-process.js";
import { expectDemoOutcomes, expectKilledWorkerReaped, runDemoJobs, standinCreateCount, standinForWorkerFile, startProviderWorker } from "../support/remote-worker-cases.js";

const { env, workers } = standinForWorkerFile("superserve", "SANDQUEUE_SUPERSERVE_API_KEY");
const createCount = () => standinCreateCount(env.SANDQUEUE_SUPERSERVE_BASE_URL!, env.SANDQUEUE_SUPERSERVE_API_KEY!);

/** The service's own list, through the official SDK. */
const serviceList = () => Sandbox.list({ apiKey: env.SANDQUEUE_SUPERSERVE_API_KEY!, baseUrl: env.SANDQUEUE_SUPERSERVE_BASE_URL! });

describe("worker --provider superserve through the stand-in", () => {
  for (const warm of [false, true]) {
    it(`runs the demo's jobs with the right statuses and leaves no sandbox in the service's list${warm ? " (warm reuse: pause on release)" : ""}`, async () => {
      const queue = uniqueQueue("superserve");
      const createsBefore = await createCount();
      const worker = await startProviderWorker(queue, { ...env, SANDQUEUE_SUPERSERVE_PAUSE_ON_RELEASE: String(warm) }, "superserve", 2, workers);
      const client = testClient(queue);
      try {
        // No per-sandbox memory or pids limit on Superserve: jobs asking for one are refused, not run without it.
        expectDemoOutcomes((await runDemoJobs(client, 90_000)).byTitle, "superserve", "refused");
      } finally {
        await client.close();
      }
      // Every job but the two refused ones got a sandbox; with warm reuse, from fewer creates.
      const ran = DEMO_JOBS.length - 2;
      const created = (await createCount()) - createsBefore;
      if (warm) expect(created).toBeLessThan(ran);
      else expect(created).toBe(ran);
      // Warm: paused sandboxes stay while the worker runs, and go when it stops.
      if (warm) await until("released sandboxes to be paused", async () => {
        const list = await serviceList();
        return list.length > 0 && list.every((s) => s.status === "paused");
      });
      await worker.stop("SIGTERM");
      const left = await serviceList();
      if (left.length) console.log("LEFT", JSON.stringify(left), JSON.stringify(worker.events.slice(-8)));
      expect(left).toEqual([]);
    }, 150_000);
  }

  it("a worker killed with -9 leaves its sandbox; another worker's reaper deletes it through the list call", async () => {
    await expectKilledWorkerReaped({ env, provider: "superserve", workers, held: async (jobId) => (await serviceList()).filter((s) => s.metadata["sandqueue.io/job"] === labelSafe(jobId)).length });
  }, 120_000);
});
