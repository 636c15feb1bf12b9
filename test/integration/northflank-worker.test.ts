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
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiClient, ApiClientInMemoryContextProvider } from "@northflank/js-client";
import { DEMO_JOBS } from "../../cli/demo-command.js";
import { dropTestQueues, testClient, uniqueQueue } from "../support/harness.js";
import { startStandinProcess, until, type StandinProcess } from "../support/standin-process.js";
import { spawnWorker, type WorkerProcess } from "../support/worker-process.js";

let standin: StandinProcess;
let env: Record<string, string> = {};
let api: ApiClient;
const workers: WorkerProcess[] = [];

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

beforeAll(async () => {
  standin = await startStandinProcess("northflank", "SANDQUEUE_NORTHFLANK_API_TOKEN", 30_000, ["--attach-service", "shared:2"]);
  env = standin.env;
  const contexts = new ApiClientInMemoryContextProvider();
  contexts.addContext({ name: "test", token: env.SANDQUEUE_NORTHFLANK_API_TOKEN!, host: env.SANDQUEUE_NORTHFLANK_BASE_URL! });
  api = new ApiClient(contexts, { throwErrorOnHttpErrorCode: true });
}, 40_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop("SIGTERM")));
  await standin?.stop();
  await dropTestQueues();
});

describe("worker --provider northflank through the stand-in", () => {
  for (const mode of ["ephemeral", "attach"] as const) {
    it(`${mode}: runs the demo's jobs with the right statuses and leaves nothing behind`, async () => {
      expect(env.SANDQUEUE_NORTHFLANK_MODE).toBe("attach");
      const before = await attachedState();
      const queue = uniqueQueue(`northflank-${mode}`);
      const worker = spawnWorker(queue, { ...env, SANDQUEUE_NORTHFLANK_MODE: mode }, ["--provider", "northflank", "--concurrency", "2"]);
      workers.push(worker);
      await worker.waitFor("worker.started", 30_000);
      const client = testClient(queue);
      try {
        const jobs = await Promise.all(DEMO_JOBS.map((j) => client.enqueue(j.spec)));
        const results = await Promise.all(jobs.map((j) => client.waitForResult(j.id, { timeoutMs: 120_000 })));
        const byTitle = Object.fromEntries(DEMO_JOBS.map((j, i) => [j.title, results[i]!]));
        const row = (t: string) => {
          const r = byTitle[t]!;
          return { status: r.status, reason: r.reason ?? null, exitCode: r.exitCode, provider: r.provider };
        };
        expect(byTitle["shell: hello + workspace file"]!.stdout).toMatch(/^hello from .*\n5\n$/);
        expect(row("shell: hello + workspace file")).toMatchObject({ status: "succeeded", exitCode: 0, provider: "northflank" });
        expect(byTitle["python: compute"]!.stdout).toBe("333332833333500000\n");
        expect(byTitle["python: read an input file"]!.stdout).toBe("42\n");
        expect(row("shell: exits 3")).toMatchObject({ status: "failed", exitCode: 3 });
        expect(byTitle["shell: exits 3"]!.stderr).toBe("something went wrong\n");
        expect(row("shell: sleeps past its 500ms limit")).toMatchObject({ status: "timed_out" });
        // No per-job memory or pids limit on Northflank (the plan's, per service): refused, not run without it.
        for (const t of ["python: 400 MiB in a 64 MiB sandbox", "shell: 40 processes, limit 16"]) {
          expect(row(t)).toMatchObject({ status: "error" });
          expect(byTitle[t]!.error?.code).toBe("SANDQ_ERR_CAPABILITY_UNSUPPORTED");
        }
        expect(row("shell: floods stdout")).toMatchObject({ status: "killed", reason: "output" });
        expect(byTitle["shell: floods stdout"]!.stdout.length).toBe(65536);
        expect(byTitle["python: tries the network"]!.stdout).toMatch(/^no network:/);
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
      const queue = uniqueQueue(`northflank-reap-${mode}`);
      const doomed = spawnWorker(queue, { ...env, SANDQUEUE_NORTHFLANK_MODE: mode }, ["--provider", "northflank", "--concurrency", "1"]);
      workers.push(doomed);
      await doomed.waitFor("worker.started", 30_000);
      const client = testClient(queue);
      try {
        await client.enqueue({ kind: "shell", script: "echo left > behind.txt; sleep 60", limits: { timeoutMs: 120_000 } });
        const held = async () => (mode === "attach" ? (await leases()).length : (await services()).length - 1);
        await until("the job's sandbox", async () => (await held()) === 1);
        // Time for the job to start writing (the instance cannot be looked into while it runs a command).
        await new Promise((r) => setTimeout(r, 2000));
        doomed.proc.kill("SIGKILL");
        await doomed.exited;
        expect(await held()).toBe(1);
        // What the dead job left stays until the reaper empties it (readable once its command died with the socket).
        if (mode === "attach") {
          await until("the instance to be readable", async () => !JSON.stringify(await attachedState()).includes('"error"'));
          expect(JSON.stringify(await attachedState())).toContain("/workspace/behind.txt");
        }
        const reaper = spawnWorker(uniqueQueue("northflank-reaper"), { ...env, SANDQUEUE_NORTHFLANK_MODE: mode }, ["--provider", "northflank", "--concurrency", "1"]);
        workers.push(reaper);
        await reaper.waitFor("worker.started", 30_000);
        // The dead worker's heartbeat expires, then the reaper (every second here) cleans up.
        await until("the reaper to clean up after the dead worker", async () => (await held()) === 0, 60_000);
        await reaper.stop("SIGTERM");
      } finally {
        await client.close();
      }
      // The attached service survived it all, exactly as it was.
      expect((await services()).map((s) => s.id)).toEqual(["shared"]);
      expect(await attachedState()).toEqual(before);
    }, 150_000);
  }
});
