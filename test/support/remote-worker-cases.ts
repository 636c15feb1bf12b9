/**
 * What every `sandqueue worker --provider REMOTE` test checks against its
 * stand-in: the demo's jobs end with the statuses a user reads off the demo
 * table, and a worker killed with -9 has its sandbox reaped by another
 * worker once its heartbeat is gone.
 */
import { afterAll, beforeAll, expect } from "vitest";
import { DEMO_JOBS } from "../../cli/demo-command.js";
import type { SandqueueClient } from "../../producer/client.js";
import type { JobResult } from "../../producer/job-result.js";
import { dropTestQueues, testClient, uniqueQueue } from "./harness.js";
import { startStandinProcess, until, type StandinProcess } from "./standin-process.js";
import { spawnWorker, type WorkerProcess } from "./worker-process.js";

/** Spawns `worker --provider NAME --concurrency N`, tracked in `workers` for the file's cleanup, and waits until it has started. */
export async function startProviderWorker(
  queue: string,
  env: Record<string, string>,
  provider: string,
  concurrency: number,
  workers: WorkerProcess[],
): Promise<WorkerProcess> {
  const worker = spawnWorker(queue, env, ["--provider", provider, "--concurrency", String(concurrency)]);
  workers.push(worker);
  await worker.waitFor("worker.started", 30_000);
  return worker;
}

/** Enqueues every demo job and waits for its result; results by demo title. */
export async function runDemoJobs(client: SandqueueClient, timeoutMs: number): Promise<{ results: JobResult[]; byTitle: Record<string, JobResult> }> {
  const jobs = await Promise.all(DEMO_JOBS.map((j) => client.enqueue(j.spec)));
  const results = await Promise.all(jobs.map((j) => client.waitForResult(j.id, { timeoutMs })));
  return { results, byTitle: Object.fromEntries(DEMO_JOBS.map((j, i) => [j.title, results[i]!])) };
}

/**
 * How the demo's 400 MiB job ends: "refused" where memory is not a
 * capability of the provider; "killed" where the VM's size is the limit but
 * no OOM event is reported (a failure by signal, the allocation never done).
 */
export type DemoMemoryOutcome = "refused" | "killed";

/** The demo table's statuses; the pids job is refused everywhere (no remote provider enforces a pids limit). */
export function expectDemoOutcomes(byTitle: Record<string, JobResult>, provider: string, memory: DemoMemoryOutcome): void {
  const row = (t: string) => {
    const r = byTitle[t]!;
    return { status: r.status, reason: r.reason ?? null, exitCode: r.exitCode, provider: r.provider };
  };
  const refused = (t: string) => {
    expect(row(t)).toMatchObject({ status: "error" });
    expect(byTitle[t]!.error?.code).toBe("SANDQ_ERR_CAPABILITY_UNSUPPORTED");
  };
  expect(byTitle["shell: hello + workspace file"]!.stdout).toMatch(/^hello from .*\n5\n$/);
  expect(row("shell: hello + workspace file")).toMatchObject({ status: "succeeded", exitCode: 0, provider });
  expect(byTitle["python: compute"]!.stdout).toBe("333332833333500000\n");
  expect(byTitle["python: read an input file"]!.stdout).toBe("42\n");
  expect(row("shell: exits 3")).toMatchObject({ status: "failed", exitCode: 3 });
  expect(byTitle["shell: exits 3"]!.stderr).toBe("something went wrong\n");
  expect(row("shell: sleeps past its 500ms limit")).toMatchObject({ status: "timed_out" });
  if (memory === "refused") refused("python: 400 MiB in a 64 MiB sandbox");
  else {
    const oom = byTitle["python: 400 MiB in a 64 MiB sandbox"]!;
    expect(oom.status).not.toBe("succeeded");
    expect(oom.stdout).not.toContain(String(400 * 1024 * 1024));
  }
  refused("shell: 40 processes, limit 16");
  expect(row("shell: floods stdout")).toMatchObject({ status: "killed", reason: "output" });
  expect(byTitle["shell: floods stdout"]!.stdout.length).toBe(65536);
  expect(byTitle["python: tries the network"]!.stdout).toMatch(/^no network:/);
}

/** Successful creates so far, from a stand-in's request log (GET /standin/requests). */
export async function standinCreateCount(baseUrl: string, apiKey: string): Promise<number> {
  const res = await fetch(`${baseUrl}/standin/requests`, { headers: { "X-API-Key": apiKey } });
  return ((await res.json()) as { op: string; status: number }[]).filter((q) => q.op === "create" && q.status === 201).length;
}

export interface KilledWorkerCase {
  env: Record<string, string>;
  provider: string;
  workers: WorkerProcess[];
  /** The job's script; by default a minute's sleep. */
  script?: string;
  /** How many sandboxes the job holds in the service's own list. */
  held(jobId: string): Promise<number>;
  /** Time for the job to get going before the kill. */
  runningMs?: number;
  /** Checks on what the dead worker left, before the reaper starts. */
  whileOrphaned?(): Promise<void>;
}

/**
 * kill -9 a worker mid-job: its sandbox stays (nobody released it) until
 * another worker's reaper (every second here) sees the dead worker's
 * heartbeat expire and cleans up through the service's list call.
 */
export async function expectKilledWorkerReaped(c: KilledWorkerCase): Promise<void> {
  const queue = uniqueQueue(`${c.provider}-reap`);
  const doomed = await startProviderWorker(queue, c.env, c.provider, 1, c.workers);
  const client = testClient(queue);
  try {
    const job = await client.enqueue({ kind: "shell", script: c.script ?? "sleep 60", limits: { timeoutMs: 120_000 } });
    await until("the job's sandbox", async () => (await c.held(job.id)) === 1);
    if (c.runningMs) await new Promise((r) => setTimeout(r, c.runningMs));
    doomed.proc.kill("SIGKILL");
    await doomed.exited;
    expect(await c.held(job.id)).toBe(1);
    await c.whileOrphaned?.();
    // On a queue of its own: it never runs the dead worker's job.
    const reaper = await startProviderWorker(uniqueQueue(`${c.provider}-reaper`), c.env, c.provider, 1, c.workers);
    await until("the reaper to clean up after the dead worker", async () => (await c.held(job.id)) === 0, 60_000);
    await reaper.stop("SIGTERM");
  } finally {
    await client.close();
  }
}

/**
 * Registers the file's beforeAll/afterAll: its stand-in started as an
 * operator would (startStandinProcess), and after the tests every worker
 * stopped, the stand-in stopped and the file's queues dropped. `env` is
 * filled with the stand-in's variables once it is up.
 */
export function standinForWorkerFile(name: string, readyKey: string, args: string[] = []): { env: Record<string, string>; workers: WorkerProcess[] } {
  const env: Record<string, string> = {};
  const workers: WorkerProcess[] = [];
  let standin: StandinProcess | undefined;
  beforeAll(async () => {
    standin = await startStandinProcess(name, readyKey, 30_000, args);
    Object.assign(env, standin.env);
  }, 40_000);
  afterAll(async () => {
    await Promise.all(workers.map((w) => w.stop("SIGTERM")));
    await standin?.stop();
    await dropTestQueues();
  });
  return { env, workers };
}
