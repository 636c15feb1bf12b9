/**
 * `sandqueue worker --provider microsandbox | provisioner` on real Redis,
 * each pointed at its stand-in started as an operator would (`npm run
 * standin -- NAME --env-file FILE`): the demo's kinds of jobs end with the
 * right statuses; a worker killed with -9 mid-job has its sandbox deleted by
 * another worker once its heartbeat is gone (found through the service's own
 * list call); and nothing is left in that list afterwards.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DEMO_JOBS } from "../../cli/demo-command.js";
import { dropTestQueues, tempDir, testClient, uniqueQueue } from "../support/harness.js";
import { spawnWorker, type WorkerProcess } from "../support/worker-process.js";

const ROOT = path.resolve(import.meta.dirname, "../..");

interface Service {
  name: "microsandbox" | "provisioner";
  /** Written last to the env file. */
  readyKey: string;
  /** The variable holding the service's API key (must never show up in logs or results). */
  keyVar: string;
  /** Sandbox names in the service's own list. */
  list(env: Record<string, string>): Promise<string[]>;
  /** How the demo's memory job ends: refused when memory is not a capability. */
  memory: "enforced" | "refused";
}

const SERVICES: Service[] = [
  {
    name: "microsandbox",
    readyKey: "MSB_API_KEY=",
    keyVar: "MSB_API_KEY",
    memory: "enforced",
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
    readyKey: "SANDQUEUE_PROVISIONER_IMAGES=",
    keyVar: "SANDQUEUE_PROVISIONER_API_KEY",
    memory: "refused",
    async list(env) {
      const res = await fetch(`${env.SANDQUEUE_PROVISIONER_URL}/api/sandboxes`, { headers: { "X-API-Key": env.SANDQUEUE_PROVISIONER_API_KEY! } });
      return ((await res.json()) as { sandboxes: Array<{ sandbox_id: string }> }).sandboxes.map((s) => s.sandbox_id);
    },
  },
];

function parseEnvFile(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split("\n")
      .filter((l) => l.includes("="))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await dropTestQueues();
});

async function startStandin(name: string, readyKey: string): Promise<{ proc: ChildProcess; env: Record<string, string> }> {
  const envFile = path.join(tempDir(`${name}-env`), `${name}.env`);
  // What `npm run standin -- NAME --env-file FILE` runs (npm would not pass our SIGTERM on).
  const proc = spawn("node", ["--", "dist/standins/cli.js", name, "--env-file", envFile], { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] });
  cleanups.push(async () => {
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    await exited;
  });
  const until = Date.now() + 30_000;
  while (!existsSync(envFile) || !readFileSync(envFile, "utf8").includes(readyKey)) {
    if (Date.now() > until || proc.exitCode !== null) throw new Error(`the ${name} stand-in wrote no env file`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, env: parseEnvFile(readFileSync(envFile, "utf8")) };
}

async function until(what: string, cond: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe.each(SERVICES)("worker --provider $name through its stand-in", (svc) => {
  it("runs the demo's jobs with the right statuses, reaps a killed worker's sandbox, and leaves none in the service's list", async () => {
    const { env } = await startStandin(svc.name, svc.readyKey);
    const queue = uniqueQueue(svc.name);
    const workerEnv = { ...env, SANDQUEUE_HEARTBEAT_TTL_MS: "2000" };
    const worker: WorkerProcess = spawnWorker(queue, workerEnv, ["--provider", svc.name, "--concurrency", "2"]);
    cleanups.push(() => worker.stop("SIGTERM"));
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
      expect(row("shell: hello + workspace file")).toMatchObject({ status: "succeeded", exitCode: 0, provider: svc.name });
      expect(byTitle["python: compute"]!.stdout).toBe("333332833333500000\n");
      expect(byTitle["python: read an input file"]!.stdout).toBe("42\n");
      expect(row("shell: exits 3")).toMatchObject({ status: "failed", exitCode: 3 });
      expect(byTitle["shell: exits 3"]!.stderr).toBe("something went wrong\n");
      expect(row("shell: sleeps past its 500ms limit")).toMatchObject({ status: "timed_out" });
      const oom = byTitle["python: 400 MiB in a 64 MiB sandbox"]!;
      if (svc.memory === "refused") {
        expect(oom.status).toBe("error");
        expect(oom.error?.code).toBe("SANDQ_ERR_CAPABILITY_UNSUPPORTED");
      } else {
        // The VM's memory is the limit, but no OOM event is reported: a failure by signal.
        expect(oom.status).not.toBe("succeeded");
        expect(oom.stdout).not.toContain(String(400 * 1024 * 1024));
      }
      expect(row("shell: 40 processes, limit 16")).toMatchObject({ status: "error" });
      expect(byTitle["shell: 40 processes, limit 16"]!.error?.code).toBe("SANDQ_ERR_CAPABILITY_UNSUPPORTED");
      expect(row("shell: floods stdout")).toMatchObject({ status: "killed", reason: "output" });
      expect(byTitle["shell: floods stdout"]!.stdout.length).toBe(65536);
      expect(byTitle["python: tries the network"]!.stdout).toMatch(/^no network:/);
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
