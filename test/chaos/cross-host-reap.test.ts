/**
 * Ownership without process ids: two workers that look like different hosts
 * (the second runs in its own UTS namespace with another hostname) share one
 * real Podman service. The second is killed with -9 mid-job; the survivor
 * can only tell that from the dead worker's expired heartbeat in Redis, and
 * must remove its containers within two heartbeat periods while never
 * touching its own.
 */
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { EngineClient } from "../../providers/docker/index.js";
import { LABEL_WORKER, labelSafe } from "../../providers/provider.js";
import { testClient, uniqueQueue } from "../support/harness.js";
import { BIN, spawnWorker, type WorkerProcess } from "../support/worker-process.js";

const ROOT = path.resolve(import.meta.dirname, "../..");
const DOCKER_HOST = process.env.DOCKER_HOST ?? `unix://${path.join(ROOT, ".sandqueue/podman/podman.sock")}`;
const IMAGE = process.env.SANDQUEUE_TEST_IMAGE ?? "sandqueue-python";
const TTL_MS = 3000;
const RUN = `${process.pid}-${Date.now().toString(36)}`;

const engine = new EngineClient({ dockerHost: DOCKER_HOST });
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

async function containersOf(workerId: string): Promise<string[]> {
  const filters = JSON.stringify({ label: [`${LABEL_WORKER}=${labelSafe(workerId)}`] });
  const list = await engine.json<Array<{ Id: string }>>({ method: "GET", path: "/containers/json", query: { all: true, filters } });
  return list.map((c) => c.Id).sort();
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function worker(queue: string, id: string, command?: { command: string; entry: string[] }): WorkerProcess {
  const w = spawnWorker(
    queue,
    {
      DOCKER_HOST,
      SANDQUEUE_PROVIDER: "docker",
      SANDQUEUE_WORKER_ID: id,
      SANDQUEUE_HEARTBEAT_TTL_MS: String(TTL_MS),
      SANDQUEUE_REAP_INTERVAL_MS: "1000",
      SANDQUEUE_POOL_MIN_IDLE: "1",
      SANDQUEUE_CONCURRENCY: "1",
    },
    [],
    command?.entry,
    command?.command,
  );
  cleanups.push(() => w.stop("SIGKILL"));
  return w;
}

describe("chaos: reaping across hosts by heartbeat", () => {
  it("a survivor removes a kill -9'd worker's containers within two heartbeat periods and keeps its own", async () => {
    await engine.json({ method: "GET", path: `/images/${IMAGE}/json` }).catch((err: Error) => {
      throw new Error(`image ${IMAGE} missing at ${DOCKER_HOST} (${err.message}); run scripts/setup.d/podman.sh`);
    });
    const qa = uniqueQueue("reap-a");
    const qb = uniqueQueue("reap-b");
    const idA = `survivor-${RUN}`;
    const idB = `victim-${RUN}`;
    const a = worker(qa, idA);
    // Another "host": same engine, other hostname, so no pid on its labels means anything to A.
    const b = worker(qb, idB, { command: "unshare", entry: ["--uts", "sh", "-c", `hostname other-host-${RUN}; exec node "$0" "$@"`, BIN, "worker"] });
    await Promise.all([a.waitFor("worker.started"), b.waitFor("worker.started")]);

    const ca = testClient(qa);
    const cb = testClient(qb);
    cleanups.push(() => ca.close(), () => cb.close());
    const long = { kind: "shell", script: "sleep 8; echo done", image: IMAGE, limits: { timeoutMs: 60_000 } } as const;
    const jobA = await ca.enqueue(long);
    await cb.enqueue({ ...long, script: "sleep 60" });
    // Both mid-job: each has its job's container (and a pool container once refilled).
    await until("both workers running a job", async () => (await containersOf(idA)).length >= 1 && (await containersOf(idB)).length >= 2, 30_000);
    const ownBefore = await containersOf(idA);

    await b.stop("SIGKILL");
    const killedAt = Date.now();
    await until("the dead worker's containers to be reaped", async () => (await containersOf(idB)).length === 0, 4 * TTL_MS);
    const reapedAfterMs = Date.now() - killedAt;
    expect(reapedAfterMs).toBeLessThanOrEqual(2 * TTL_MS + 500);
    // The survivor did it (it logs once its reap pass is over).
    await a.waitFor("worker.reaped", 5_000);

    // The survivor's own containers were never touched: its job finishes normally.
    const ownNow = await containersOf(idA);
    for (const id of ownBefore) if (!ownNow.includes(id)) expect.fail(`survivor container ${id.slice(0, 12)} vanished mid-job`);
    const r = await ca.waitForResult(jobA.id, { timeoutMs: 30_000 });
    expect(r).toMatchObject({ status: "succeeded", stdout: "done\n" });
    await a.stop("SIGTERM");
    expect(await containersOf(idA)).toEqual([]);
  }, 90_000);
});
