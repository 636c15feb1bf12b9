/**
 * `sandqueue worker --provider northflank` on real Redis, pointed at the
 * Northflank stand-in started as an operator would (`npm run standin --
 * northflank --env-file FILE --attach-service shared:2`): in both modes the
 * demo's kinds of jobs end with the right statuses, jobs asking what the
 * provider cannot enforce are refused, and nothing is left behind: no
 * service in the service's own list (the SDK's list call) but the attached
 * one, which is exactly as it was (same service, same instances, empty
 * workspaces, no lease). Then a worker killed with -9 in each mode: another
 * worker's reaper deletes its ephemeral service, and frees and empties the
 * attached instance it held without touching the service.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { ApiClient, ApiClientInMemoryContextProvider } from "@northflank/js-client";
import { testClient, uniqueQueue } from "../support/harness.js";
import { until } from "../support/standin-process.js";
import { expectDemoOutcomes, expectKilledWorkerReaped, runDemoJobs, standinForWorkerFile, startProviderWorker } from "../support/remote-worker-cases.js";

const { env, workers } = standinForWorkerFile("northflank", "SANDQUEUE_NORTHFLANK_API_TOKEN", ["--attach-service", "shared:2"]);
let api: ApiClient;

const project = () => ({ projectId: env.SANDQUEUE_NORTHFLANK_PROJECT_ID! });
/** The service's own lists, through the official SDK. */
const services = async () => (await api.list.services.all({ parameters: project() })).data.services;
const leases = async () => (await api.list.secrets.all({ parameters: project() })).data.secrets;

/** The attached service as the stand-in holds it, with what its instances' workspaces contain. */
async function attachedState(): Promise<unknown> {
  const headers = { Authorization: `Bearer ${env.SANDQUEUE_NORTHFLANK_API_TOKEN}` };
  const all = (await (await fetch(`${env.SANDQUEUE_NORTHFLANK_BASE_URL}/standin/services`, { headers })).json()) as { id: string }[];
  const files = await (await fetch(`${env.SANDQUEUE_NORTHFLANK_BASE_URL}/standin/services/shared/files`, { headers })).json();
  return { service: all.find((s) => s.id === "shared"), files };
}

beforeAll(() => {
  const contexts = new ApiClientInMemoryContextProvider();
  contexts.addContext({ name: "test", token: env.SANDQUEUE_NORTHFLANK_API_TOKEN!, host: env.SANDQUEUE_NORTHFLANK_BASE_URL! });
  api = new ApiClient(contexts, { throwErrorOnHttpErrorCode: true });
});

describe("worker --provider northflank through the stand-in", () => {
  for (const mode of ["ephemeral", "attach"] as const) {
    it(`${mode}: runs the demo's jobs with the right statuses and leaves nothing behind`, async () => {
      expect(env.SANDQUEUE_NORTHFLANK_MODE).toBe("attach");
      const before = await attachedState();
      const queue = uniqueQueue(`northflank-${mode}`);
      const worker = await startProviderWorker(queue, { ...env, SANDQUEUE_NORTHFLANK_MODE: mode }, "northflank", 2, workers);
      const client = testClient(queue);
      try {
        // No per-job memory or pids limit on Northflank (the plan's, per service): refused, not run without it.
        expectDemoOutcomes((await runDemoJobs(client, 120_000)).byTitle, "northflank", "refused");
      } finally {
        await client.close();
      }
      await worker.stop("SIGTERM");
      expect((await services()).map((s) => s.id)).toEqual(["shared"]);
      expect(await leases()).toEqual([]);
      expect(await attachedState()).toEqual(before);
    }, 180_000);

    it(`${mode}: a worker killed with -9 mid-job; another worker's reaper cleans up after it through the list calls`, async () => {
      const before = await attachedState();
      await expectKilledWorkerReaped({
        env: { ...env, SANDQUEUE_NORTHFLANK_MODE: mode },
        provider: "northflank",
        workers,
        script: "echo left > behind.txt; sleep 60",
        held: async () => (mode === "attach" ? (await leases()).length : (await services()).length - 1),
        // Time for the job to start writing (the instance cannot be looked into while it runs a command).
        runningMs: 2000,
        // What the dead job left stays until the reaper empties it (readable once its command died with the socket).
        whileOrphaned: async () => {
          if (mode !== "attach") return;
          await until("the instance to be readable", async () => !JSON.stringify(await attachedState()).includes('"error"'));
          expect(JSON.stringify(await attachedState())).toContain("/workspace/behind.txt");
        },
      });
      // The attached service survived it all, exactly as it was.
      expect((await services()).map((s) => s.id)).toEqual(["shared"]);
      expect(await attachedState()).toEqual(before);
    }, 150_000);
  }
});
