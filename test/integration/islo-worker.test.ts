/**
 * `sandqueue worker --provider islo` on real Redis, pointed at the islo
 * stand-in started as an operator would (`npm run standin -- islo
 * --env-file FILE`): the demo's kinds of jobs end with the right statuses,
 * and the service's own list holds no sandbox and no profile afterwards.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEMO_JOBS } from "../../cli/demo-command.js";
import { dropTestQueues, tempDir, testClient, uniqueQueue } from "../support/harness.js";
import { spawnWorker, type WorkerProcess } from "../support/worker-process.js";
import { startHttpUpstream, type Upstream } from "../support/egress-fixtures.js";
import { writeFileSync } from "node:fs";

const ROOT = path.resolve(import.meta.dirname, "../..");
let standin: ChildProcess;
let env: Record<string, string> = {};
let worker: WorkerProcess | undefined;
let upstream: Upstream;
const queue = uniqueQueue("islo");

function parseEnvFile(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split("\n")
      .filter((l) => l.includes("="))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

async function standinList(what: "sandboxes" | "profiles" | "requests"): Promise<unknown[]> {
  const res = await fetch(`${env.SANDQUEUE_ISLO_COMPUTE_URL}/standin/${what}`);
  return (await res.json()) as unknown[];
}

/** The list once the worker's background releases are through (they follow the results by moments). */
async function settled(what: "sandboxes" | "profiles"): Promise<unknown[]> {
  const end = Date.now() + 10_000;
  let list = await standinList(what);
  while (list.length > 0 && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
    list = await standinList(what);
  }
  return list;
}

beforeAll(async () => {
  const dir = tempDir("islo-env");
  const envFile = path.join(dir, "islo.env");
  // Gateway profiles enforced, with names of an upstream on 127.0.0.1.
  upstream = await startHttpUpstream();
  writeFileSync(path.join(dir, "hosts"), "127.0.0.1 open.test\n127.0.0.1 closed.test\n");
  const flags = ["--enforce-gateway", "--egress-hosts", path.join(dir, "hosts"), "--allow-private"];
  // What `npm run standin -- islo --env-file FILE` runs (npm would not pass our SIGTERM on).
  standin = spawn("node", ["--", "dist/standins/cli.js", "islo", "--env-file", envFile, ...flags], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
  const until = Date.now() + 30_000;
  while (!existsSync(envFile) || !readFileSync(envFile, "utf8").includes("SANDQUEUE_ISLO_API_KEY=")) {
    if (Date.now() > until || standin.exitCode !== null) throw new Error("the islo stand-in wrote no env file");
    await new Promise((r) => setTimeout(r, 50));
  }
  env = parseEnvFile(readFileSync(envFile, "utf8"));
}, 40_000);

afterAll(async () => {
  await worker?.stop("SIGTERM");
  const exited = new Promise((r) => standin.once("exit", r));
  standin.kill("SIGTERM");
  await exited;
  await upstream?.close();
  await dropTestQueues();
});

describe("worker --provider islo through the stand-in", () => {
  it("runs the demo's jobs with the right statuses and leaves no sandbox in islo's list", async () => {
    worker = spawnWorker(queue, env, ["--provider", "islo", "--concurrency", "2"]);
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
      expect(row("shell: hello + workspace file")).toMatchObject({ status: "succeeded", exitCode: 0, provider: "islo" });
      expect(byTitle["python: compute"]!.stdout).toBe("333332833333500000\n");
      expect(byTitle["python: read an input file"]!.stdout).toBe("42\n");
      expect(row("shell: exits 3")).toMatchObject({ status: "failed", exitCode: 3 });
      expect(byTitle["shell: exits 3"]!.stderr).toBe("something went wrong\n");
      expect(row("shell: sleeps past its 500ms limit")).toMatchObject({ status: "timed_out" });
      // islo sizes the VM (memoryLimit) but reports no OOM event: the kill is a plain failure by signal.
      const oom = byTitle["python: 400 MiB in a 64 MiB sandbox"]!;
      expect(oom.status).not.toBe("succeeded");
      expect(oom.stdout).not.toContain(String(400 * 1024 * 1024));
      // No pids limit on islo: a job asking for one is refused, not run without it.
      expect(row("shell: 40 processes, limit 16")).toMatchObject({ status: "error" });
      expect(byTitle["shell: 40 processes, limit 16"]!.error?.code).toBe("SANDQ_ERR_CAPABILITY_UNSUPPORTED");
      expect(row("shell: floods stdout")).toMatchObject({ status: "killed", reason: "output" });
      expect(byTitle["shell: floods stdout"]!.stdout.length).toBe(65536);
      expect(byTitle["python: tries the network"]!.stdout).toMatch(/^no network:/);
    } finally {
      await client.close();
    }
    expect(await settled("sandboxes")).toEqual([]);
    expect(await settled("profiles")).toEqual([]);
  }, 150_000);

  it("a job's network policy runs under a gateway profile of its own, made before its sandbox and deleted after; what islo cannot say is refused", async () => {
    worker ??= spawnWorker(queue, env, ["--provider", "islo", "--concurrency", "2"]);
    await worker.waitFor("worker.started", 30_000);
    const client = testClient(queue);
    const before = ((await standinList("requests")) as { method: string; path: string; status: number }[]).length;
    try {
      const curl = (host: string, p: string) => `curl -s -o /dev/null -w '%{http_code} ' http://${host}:${upstream.port}${p}`;
      const ok = await client.enqueue({
        kind: "shell",
        script: `${curl("open.test", "/allowed")}; ${curl("closed.test", "/refused")}; echo under-policy`,
        network: { default: "deny", egress: ["open.test", { host: "api.example.com", methods: ["GET"] }] },
      });
      const capped = await client.enqueue({ kind: "shell", script: "echo never", network: { default: "deny", egress: ["pypi.org"], maxBytes: 1000 } });
      const r = await client.waitForResult(ok.id, { timeoutMs: 60_000 });
      expect(r).toMatchObject({ status: "succeeded", stdout: "200 403 under-policy\n" });
      expect(upstream.seen.map((q) => q.url)).toEqual(["/allowed"]);
      const refused = await client.waitForResult(capped.id, { timeoutMs: 60_000 });
      expect(refused.status).toBe("error");
      expect(refused.error?.code).toBe("SANDQ_ERR_CAPABILITY_UNSUPPORTED");
      expect(refused.error?.message).toContain("network.maxBytes");
    } finally {
      await client.close();
    }
    expect(await settled("sandboxes")).toEqual([]);
    expect(await settled("profiles")).toEqual([]);
    const log = ((await standinList("requests")) as { method: string; path: string; status: number }[]).slice(before).map((q) => `${q.method} ${q.path.replace(/[0-9a-f-]{36}/g, "ID")} ${q.status}`);
    // One profile and its two rules, then the sandbox; at release the sandbox first, then the profile.
    const at = (line: string) => log.findIndex((l) => l === line || l.startsWith(line));
    expect(log.filter((l) => l.startsWith("POST /gateway/profiles"))).toEqual(["POST /gateway/profiles 200", "POST /gateway/profiles/ID/rules 200", "POST /gateway/profiles/ID/rules 200"]);
    expect(at("POST /gateway/profiles 200")).toBeLessThan(at("POST /sandboxes 201"));
    expect(at("DELETE /sandboxes/")).toBeGreaterThan(-1);
    expect(at("DELETE /sandboxes/")).toBeLessThan(at("DELETE /gateway/profiles/ID 204"));
  }, 120_000);

  it("a worker killed -9 mid-job: another worker reaps its sandbox through islo's list once its heartbeat is gone, and runs the job", async () => {
    await worker?.stop("SIGTERM");
    worker = undefined;
    const q = uniqueQueue("islo-kill");
    const fast = { ...env, SANDQUEUE_HEARTBEAT_TTL_MS: "2000" };
    const a = spawnWorker(q, fast, ["--provider", "islo", "--concurrency", "1"]);
    await a.waitFor("worker.started", 30_000);
    const client = testClient(q);
    try {
      const { id } = await client.enqueue({ kind: "shell", script: "sleep 4; echo done", limits: { timeoutMs: 30_000 } });
      const until = Date.now() + 20_000;
      let orphan: { name: string } | undefined;
      while (!(orphan = ((await standinList("sandboxes")) as { name: string }[])[0])) {
        if (Date.now() > until) throw new Error("worker A made no sandbox");
        await new Promise((r) => setTimeout(r, 50));
      }
      await a.stop("SIGKILL");
      const b = spawnWorker(q, fast, ["--provider", "islo", "--concurrency", "1"]);
      try {
        const r = await client.waitForResult(id, { timeoutMs: 60_000 });
        expect(r).toMatchObject({ status: "succeeded", stdout: "done\n", worker: expect.stringContaining(`:${b.pid}:`) });
        const reaped = await b.waitFor("worker.reaped", 30_000);
        expect(reaped).toMatchObject({ sandboxes: 1 });
        expect(((await standinList("sandboxes")) as { name: string }[]).map((x) => x.name)).not.toContain(orphan.name);
        expect(await settled("sandboxes")).toEqual([]);
      } finally {
        await b.stop("SIGTERM");
      }
    } finally {
      await client.close();
    }
  }, 120_000);
});
