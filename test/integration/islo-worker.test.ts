/**
 * `sandqueue worker --provider islo` on real Redis, pointed at the islo
 * stand-in started as an operator would (`npm run standin -- islo
 * --env-file FILE`): the demo's kinds of jobs end with the right statuses,
 * and the service's own list holds no sandbox and no profile afterwards.
 */
import { writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dropTestQueues, tempDir, testClient, uniqueQueue } from "../support/harness.js";
import { spawnWorker, type WorkerProcess } from "../support/worker-process.js";
import { startHttpUpstream, type Upstream } from "../support/egress-fixtures.js";
import { startStandinProcess, type StandinProcess } from "../support/standin-process.js";
import { expectDemoOutcomes, runDemoJobs } from "../support/remote-worker-cases.js";

let standin: StandinProcess;
let env: Record<string, string> = {};
let worker: WorkerProcess | undefined;
let upstream: Upstream;
const queue = uniqueQueue("islo");

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
  // Gateway profiles enforced, with names of an upstream on 127.0.0.1.
  upstream = await startHttpUpstream();
  writeFileSync(path.join(dir, "hosts"), "127.0.0.1 open.test\n127.0.0.1 closed.test\n");
  const flags = ["--enforce-gateway", "--egress-hosts", path.join(dir, "hosts"), "--allow-private"];
  standin = await startStandinProcess("islo", "SANDQUEUE_ISLO_API_KEY", 30_000, flags);
  env = standin.env;
}, 40_000);

afterAll(async () => {
  await worker?.stop("SIGTERM");
  await standin?.stop();
  await upstream?.close();
  await dropTestQueues();
});

describe("worker --provider islo through the stand-in", () => {
  it("runs the demo's jobs with the right statuses and leaves no sandbox in islo's list", async () => {
    worker = spawnWorker(queue, env, ["--provider", "islo", "--concurrency", "2"]);
    await worker.waitFor("worker.started", 30_000);
    const client = testClient(queue);
    try {
      // islo sizes the VM (memoryLimit) but reports no OOM event: the kill is a plain failure by signal.
      // No pids limit on islo: a job asking for one is refused, not run without it.
      expectDemoOutcomes((await runDemoJobs(client, 90_000)).byTitle, "islo", "killed");
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
