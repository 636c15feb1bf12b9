/**
 * `sandqueue worker --provider e2b` on real Redis, pointed at the E2B
 * stand-in started as an operator would (`npm run standin -- e2b --env-file
 * FILE`): the demo's kinds of jobs end with the right statuses, jobs asking
 * what E2B cannot enforce are refused, a running job cancelled ends killed,
 * and the service's own list (the official SDK's Sandbox.list) holds
 * nothing afterwards; then a worker killed with -9 whose sandbox another
 * worker's reaper kills.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox, type SandboxInfo } from "e2b";
import { DEMO_JOBS } from "../../cli/demo-command.js";
import { labelSafe } from "../../providers/provider.js";
import { dropTestQueues, testClient, uniqueQueue } from "../support/harness.js";
import { startStandinProcess, until, type StandinProcess } from "../support/standin-process.js";
import { spawnWorker, type WorkerProcess } from "../support/worker-process.js";

let standin: StandinProcess;
let env: Record<string, string> = {};
const workers: WorkerProcess[] = [];

/** The service's own list, through the official SDK (every page). */
async function serviceList(): Promise<SandboxInfo[]> {
  // apiUrl is an @internal option in the SDK's types, honoured at run time by every call.
  const conn = { apiKey: env.SANDQUEUE_E2B_API_KEY!, apiUrl: env.SANDQUEUE_E2B_API_URL! };
  const pages = Sandbox.list(conn);
  const out: SandboxInfo[] = [];
  while (pages.hasNext) out.push(...(await pages.nextItems()));
  return out;
}

/** Successful creates so far, from the stand-in's request log. */
async function createCount(): Promise<number> {
  const res = await fetch(`${env.SANDQUEUE_E2B_API_URL}/standin/requests`, { headers: { "X-API-Key": env.SANDQUEUE_E2B_API_KEY! } });
  return ((await res.json()) as { op: string; status: number }[]).filter((q) => q.op === "create" && q.status === 201).length;
}

beforeAll(async () => {
  standin = await startStandinProcess("e2b", "SANDQUEUE_E2B_API_KEY");
  env = standin.env;
}, 40_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop("SIGTERM")));
  await standin?.stop();
  await dropTestQueues();
});

describe("worker --provider e2b through the stand-in", () => {
  it("runs the demo's jobs and a cancelled one with the right statuses, and leaves no sandbox in the service's list", async () => {
    const queue = uniqueQueue("e2b");
    const createsBefore = await createCount();
    const worker = spawnWorker(queue, env, ["--provider", "e2b", "--concurrency", "2"]);
    workers.push(worker);
    await worker.waitFor("worker.started", 30_000);
    const client = testClient(queue);
    try {
      const jobs = await Promise.all(DEMO_JOBS.map((j) => client.enqueue(j.spec)));
      const results = await Promise.all(jobs.map((j) => client.waitForResult(j.id, { timeoutMs: 90_000 })));
      const byTitle = Object.fromEntries(DEMO_JOBS.map((j, i) => [j.title, results[i]!]));
      const row = (t: string) => {
        const r = byTitle[t]!;
        return { status: r.status, reason: r.reason ?? null, exitCode: r.exitCode, provider: r.provider };
      };
      expect(byTitle["shell: hello + workspace file"]!.stdout).toMatch(/^hello from .*\n5\n$/);
      expect(row("shell: hello + workspace file")).toMatchObject({ status: "succeeded", exitCode: 0, provider: "e2b" });
      expect(byTitle["python: compute"]!.stdout).toBe("333332833333500000\n");
      expect(byTitle["python: read an input file"]!.stdout).toBe("42\n");
      expect(row("shell: exits 3")).toMatchObject({ status: "failed", exitCode: 3 });
      expect(byTitle["shell: exits 3"]!.stderr).toBe("something went wrong\n");
      expect(row("shell: sleeps past its 500ms limit")).toMatchObject({ status: "timed_out" });
      // No per-sandbox memory or pids limit on E2B: jobs asking for one are refused, not run without it.
      for (const t of ["python: 400 MiB in a 64 MiB sandbox", "shell: 40 processes, limit 16"]) {
        expect(row(t)).toMatchObject({ status: "error" });
        expect(byTitle[t]!.error?.code).toBe("SANDQ_ERR_CAPABILITY_UNSUPPORTED");
      }
      expect(row("shell: floods stdout")).toMatchObject({ status: "killed", reason: "output" });
      expect(byTitle["shell: floods stdout"]!.stdout.length).toBe(65536);
      expect(byTitle["python: tries the network"]!.stdout).toMatch(/^no network:/);

      // A running job cancelled: killed/cancelled, its sandbox gone.
      const long = await client.enqueue({ kind: "shell", script: "echo started; sleep 60", limits: { timeoutMs: 120_000 } });
      const ofJob = async () => (await serviceList()).filter((s) => s.metadata["sandqueue.io/job"] === labelSafe(long.id));
      await until("the long job's sandbox", async () => (await ofJob()).length === 1);
      expect(await client.cancel(long.id)).toBe(true);
      const cancelled = await client.waitForResult(long.id, { timeoutMs: 30_000 });
      expect(cancelled).toMatchObject({ status: "killed", reason: "cancelled" });
      await until("the cancelled job's sandbox to go", async () => (await ofJob()).length === 0);
    } finally {
      await client.close();
    }
    // Every job but the two refused ones got a sandbox of its own.
    expect((await createCount()) - createsBefore).toBe(DEMO_JOBS.length - 2 + 1);
    await worker.stop("SIGTERM");
    expect(await serviceList()).toEqual([]);
  }, 150_000);

  it("a worker killed with -9 leaves its sandbox; another worker's reaper kills it through the list call", async () => {
    const queue = uniqueQueue("e2b-reap");
    const doomed = spawnWorker(queue, env, ["--provider", "e2b", "--concurrency", "1"]);
    workers.push(doomed);
    await doomed.waitFor("worker.started", 30_000);
    const client = testClient(queue);
    try {
      const job = await client.enqueue({ kind: "shell", script: "sleep 60", limits: { timeoutMs: 120_000 } });
      const ofJob = async () => (await serviceList()).filter((s) => s.metadata["sandqueue.io/job"] === labelSafe(job.id));
      await until("the job's sandbox", async () => (await ofJob()).length === 1);
      doomed.proc.kill("SIGKILL");
      await doomed.exited;
      expect(await ofJob()).toHaveLength(1);
      const reaper = spawnWorker(uniqueQueue("e2b-reaper"), env, ["--provider", "e2b", "--concurrency", "1"]);
      workers.push(reaper);
      await reaper.waitFor("worker.started", 30_000);
      // The dead worker's heartbeat expires, then the reaper (every second here) kills its sandbox.
      await until("the reaper to kill the orphan", async () => (await ofJob()).length === 0, 60_000);
      await reaper.stop("SIGTERM");
    } finally {
      await client.close();
    }
  }, 120_000);
});
