/**
 * `sandqueue worker --provider microsandbox | provisioner` on real Redis,
 * each pointed at its stand-in started as an operator would (`npm run
 * standin -- NAME --env-file FILE`): the demo's kinds of jobs end with the
 * right statuses; a worker killed with -9 mid-job has its sandbox deleted by
 * another worker once its heartbeat is gone (found through the service's own
 * list call); and nothing is left in that list afterwards.
 */
import { afterAll, describe, expect, it } from "vitest";
import { dropTestQueues, testClient, uniqueQueue } from "../support/harness.js";
import { startStandinProcess, until } from "../support/standin-process.js";
import { spawnWorker, type WorkerProcess } from "../support/worker-process.js";
import { expectDemoOutcomes, runDemoJobs, type DemoMemoryOutcome } from "../support/remote-worker-cases.js";

interface Service {
  name: "microsandbox" | "provisioner";
  /** Written last to the env file. */
  readyKey: string;
  /** The variable holding the service's API key (must never show up in logs or results). */
  keyVar: string;
  /** Sandbox names in the service's own list. */
  list(env: Record<string, string>): Promise<string[]>;
  /** How the demo's memory job ends: refused when memory is not a capability. */
  memory: DemoMemoryOutcome;
}

const SERVICES: Service[] = [
  {
    name: "microsandbox",
    readyKey: "MSB_API_KEY",
    keyVar: "MSB_API_KEY",
    memory: "killed",
    async list(env) {
      const res = await fetch(`${env.MSB_SERVER_URL}/api/v1/rpc`, {
        method: "POST",
        headers: { Authorization: `Bearer ${env.MSB_API_KEY}`, "Content-Type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", method: "sandbox.metrics.get", params: { namespace: "*" }, id: 1 }),
      });
      const body = (await res.json()) as { result: { sandboxes: Array<{ name: string }> } };
      return body.result.sandboxes.map((s) => s.name);
    },
  },
  {
    name: "provisioner",
    readyKey: "SANDQUEUE_PROVISIONER_IMAGES",
    keyVar: "SANDQUEUE_PROVISIONER_API_KEY",
    memory: "refused",
    async list(env) {
      const res = await fetch(`${env.SANDQUEUE_PROVISIONER_URL}/api/sandboxes`, { headers: { "X-API-Key": env.SANDQUEUE_PROVISIONER_API_KEY! } });
      return ((await res.json()) as { sandboxes: Array<{ sandbox_id: string }> }).sandboxes.map((s) => s.sandbox_id);
    },
  },
];

const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await dropTestQueues();
});

describe.each(SERVICES)("worker --provider $name through its stand-in", (svc) => {
  it("runs the demo's jobs with the right statuses, reaps a killed worker's sandbox, and leaves none in the service's list", async () => {
    const standin = await startStandinProcess(svc.name, svc.readyKey);
    cleanups.push(() => standin.stop());
    const env = standin.env;
    const queue = uniqueQueue(svc.name);
    const workerEnv = { ...env, SANDQUEUE_HEARTBEAT_TTL_MS: "2000" };
    const worker: WorkerProcess = spawnWorker(queue, workerEnv, ["--provider", svc.name, "--concurrency", "2"]);
    cleanups.push(() => worker.stop("SIGTERM"));
    await worker.waitFor("worker.started", 30_000);
    const client = testClient(queue);
    try {
      const { results, byTitle } = await runDemoJobs(client, 120_000);
      expectDemoOutcomes(byTitle, svc.name, svc.memory);
      expect(await svc.list(env)).toEqual([]);
      const key = env[svc.keyVar]!;
      expect(key.length).toBeGreaterThan(8);
      expect(JSON.stringify(results)).not.toContain(key);
      expect(JSON.stringify(worker.events)).not.toContain(key);

      // kill -9 mid-job: the sandbox stays on the service until a live worker sees no heartbeat.
      const long = await client.enqueue({ kind: "shell", script: "echo started; sleep 20", limits: { timeoutMs: 60_000 } });
      await until("the long job's sandbox", async () => (await svc.list(env)).length === 1, 30_000);
      await worker.stop("SIGKILL");
      const orphan = (await svc.list(env))[0]!;
      const second = spawnWorker(queue, workerEnv, ["--provider", svc.name, "--concurrency", "1"]);
      cleanups.push(() => second.stop("SIGTERM"));
      await second.waitFor("worker.started", 30_000);
      await until("the orphan reaped", async () => !(await svc.list(env)).includes(orphan), 30_000);
      await client.cancel(long.id).catch(() => undefined);
      await client.waitForResult(long.id, { timeoutMs: 60_000 }).catch(() => undefined);
      await second.stop("SIGTERM");
      await until("an empty list", async () => (await svc.list(env)).length === 0, 15_000);
    } finally {
      await client.close();
    }
  }, 240_000);
});
