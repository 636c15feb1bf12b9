/**
 * 200 concurrent long-polls held open while their jobs wait and run: every
 * one comes back with its own job's result, and the API reports them as
 * held while they wait. A long-poll that outlasts its wait (or the server's
 * cap) answers the job's state instead.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { api, startTestApi, type TestApi } from "../support/api-harness.js";
import { requireCommand, startTestWorker, uniqueQueue } from "../support/harness.js";

requireCommand("bwrap", "bubblewrap");
const N = 200;

describe("long-polls under load", () => {
  const queue = uniqueQueue("poll");
  let worker: WorkerRuntime;
  let t: TestApi;
  let token: string;

  beforeAll(async () => {
    worker = await startTestWorker(queue, { concurrency: 2 });
    t = await startTestApi(queue, { maxWaitMs: 30_000 });
    token = await t.key("poller");
  });

  afterAll(async () => {
    await t?.server.close();
    await worker?.close(1000);
  });

  const held = async (): Promise<number> => {
    const m = (await api(t.url, null, "GET", "/metrics")).text;
    return Number(new RegExp(`sandqueue_api_open_requests\\{queue="${queue}",kind="longpoll"\\} (\\d+)`).exec(m)?.[1] ?? NaN);
  };

  it(`holds ${N} concurrent long-polls while the jobs run, and answers each with its own result`, async () => {
    // Two blockers take both worker slots, so all N jobs are still queued when the polls start.
    const blockers = await api(t.url, token, "POST", "/v1/jobs", { jobs: [{ kind: "shell", script: "sleep 2" }, { kind: "shell", script: "sleep 2" }] });
    const batch = await api(t.url, token, "POST", "/v1/jobs", { jobs: Array.from({ length: N }, (_, i) => ({ kind: "shell", script: `echo ${i}` })) });
    expect(batch.status).toBe(202);
    const ids = batch.json.ids as string[];
    const started = Date.now();
    const polls = ids.map((id) => api(t.url, token, "GET", `/v1/jobs/${id}?wait=30s`));
    let maxHeld = 0;
    const sampler = (async () => {
      while (Date.now() - started < 1500) {
        maxHeld = Math.max(maxHeld, await held());
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const answers = await Promise.all(polls);
    await sampler;
    expect(maxHeld).toBe(N);
    expect(answers.map((a) => a.status)).toEqual(ids.map(() => 200));
    expect(answers.map((a) => [a.json.id, a.json.state, a.json.result?.status, a.json.result?.stdout])).toEqual(
      ids.map((id, i) => [id, "finished", "succeeded", `${i}\n`]),
    );
    expect(await held()).toBe(0);
    for (const id of blockers.json.ids) await api(t.url, token, "GET", `/v1/jobs/${id}?wait=10s`);
  });

  it("answers the state when the wait ends first, and caps the wait at the server's maximum", async () => {
    const capped = await startTestApi(queue, { maxWaitMs: 700, webhookConcurrency: 0 });
    try {
      const { json: sub } = await api(t.url, token, "POST", "/v1/jobs", { kind: "shell", script: "sleep 3" });
      let t0 = Date.now();
      const short = await api(t.url, token, "GET", `/v1/jobs/${sub.id}?wait=300ms`);
      const shortMs = Date.now() - t0;
      expect(short.json.result).toBeNull();
      expect(["queued", "running"]).toContain(short.json.state);
      expect(shortMs).toBeGreaterThanOrEqual(280);
      expect(shortMs).toBeLessThan(2000);
      t0 = Date.now();
      const long = await api(capped.url, token, "GET", `/v1/jobs/${sub.id}?wait=10m`);
      const longMs = Date.now() - t0;
      expect(long.json.state).not.toBe("finished");
      expect(longMs).toBeGreaterThanOrEqual(650);
      expect(longMs).toBeLessThan(2500);
      await api(t.url, token, "DELETE", `/v1/jobs/${sub.id}`);
    } finally {
      await capped.server.close();
    }
  });
});
