/**
 * The metrics as an operator sees them: a real Prometheus (Debian's binary,
 * its own temp dir and port, 1 s scrapes, file_sd targets) scrapes two real
 * workers (local provider) and a `sandqueue api` on one queue while jobs of
 * every status run, some through the API (with a webhook and refusals); then
 * every query of every panel of every dashboard in grafana/dashboards/ is
 * evaluated through Prometheus's HTTP API and must be valid and return data.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SandqueueClient } from "../../producer/client.js";
import type { JobResult } from "../../producer/job-result.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { freePort, requireCommand, startTestWorker, tempDir, testClient, uniqueQueue } from "../support/harness.js";
import { api, startTestApi, type TestApi } from "../support/api-harness.js";

requireCommand("prometheus", "prometheus");
requireCommand("promtool", "prometheus");
requireCommand("bwrap", "bubblewrap");
requireCommand("redis-server", "redis-server");

const ROOT = join(import.meta.dirname, "../..");
const DASHBOARD = join(ROOT, "grafana/dashboards/sandqueue.json");
const DASHBOARDS = readdirSync(join(ROOT, "grafana/dashboards"))
  .filter((f) => f.endsWith(".json"))
  .map((f) => join(ROOT, "grafana/dashboards", f));
const SHIPPED_CONFIG = join(ROOT, "grafana/prometheus/prometheus.yml");

interface Target {
  expr: string;
  refId: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Dashboard {
  panels: Panel[];
  templating: { list: { name: string; type: string; query: unknown; datasource?: { uid?: string } }[] };
}

function panelsOf(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...panelsOf(p.panels ?? [])]);
}

/** Grafana's template variables, as Grafana would expand them for this test's queue and time range. */
function expand(expr: string, vars: Record<string, string>): string {
  return expr.replace(/\$\{(\w+)(?::\w+)?\}|\$(\w+)/g, (m, braced: string | undefined, bare: string | undefined) => {
    const name = (braced ?? bare)!;
    if (!(name in vars)) throw new Error(`unknown template variable ${m} in: ${expr}`);
    return vars[name]!;
  });
}

interface PromResponse {
  status: string;
  error?: string;
  data: { resultType: string; result: { metric: Record<string, string>; value: [number, string] }[] };
}

describe("dashboard queries against a real Prometheus scraping two workers and an API", () => {
  const queue = uniqueQueue("metrics");
  const dir = tempDir("prometheus");
  let prometheus: ChildProcess | undefined;
  let promLog = "";
  let promUrl = "";
  const workers: WorkerRuntime[] = [];
  const metricsPorts: number[] = [];
  let client: SandqueueClient;
  let apiServer: TestApi;
  let receiver: Server;

  async function query(expr: string): Promise<PromResponse> {
    const res = await fetch(`${promUrl}/api/v1/query?${new URLSearchParams({ query: expr })}`, { signal: AbortSignal.timeout(5000) });
    return (await res.json()) as PromResponse;
  }

  async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn().catch(() => undefined);
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; prometheus log:\n${promLog.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  beforeAll(async () => {
    for (let i = 0; i < 2; i++) {
      const port = await freePort();
      metricsPorts.push(port);
      workers.push(
        await startTestWorker(queue, {
          metricsPort: port,
          metricsHost: "127.0.0.1",
          concurrency: 2,
          snapshotsUrl: `file://${tempDir("snapshots")}`,
        }),
      );
    }
    client = testClient(queue);
    apiServer = await startTestApi(queue, { callbackAllow: ["loopback"] });
    receiver = createServer((req, res) => req.resume().on("end", () => res.writeHead(204).end()));
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));

    // Workers and the API are found through file_sd, as the shipped config does it.
    const targets = [...metricsPorts, apiServer.server.port].map((p) => `"127.0.0.1:${p}"`);
    writeFileSync(join(dir, "targets.yml"), `- targets: [${targets.join(", ")}]\n`);
    writeFileSync(
      join(dir, "prometheus.yml"),
      [
        "global:",
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        "scrape_configs:",
        "  - job_name: sandqueue",
        "    scrape_timeout: 900ms",
        "    file_sd_configs:",
        "      - files: [targets.yml]",
        "        refresh_interval: 1s",
        "",
      ].join("\n"),
    );
    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    prometheus = spawn(
      "prometheus",
      [
        `--config.file=${join(dir, "prometheus.yml")}`,
        `--storage.tsdb.path=${join(dir, "data")}`,
        `--web.listen-address=127.0.0.1:${port}`,
        "--log.level=warn",
      ],
      { cwd: dir, stdio: ["ignore", "ignore", "pipe"] },
    );
    prometheus.stderr!.on("data", (d: Buffer) => (promLog += d.toString()));
    await until("prometheus /-/ready", async () => ((await fetch(`${promUrl}/-/ready`)).ok ? true : undefined));
    await until("both workers and the API scraped and up", async () => {
      const r = await query('sum(up{job="sandqueue"}) == 3');
      return r.data.result.length === 1 ? true : undefined;
    });
  });

  afterAll(async () => {
    await client?.close();
    if (prometheus && prometheus.exitCode === null) {
      const exited = new Promise((r) => prometheus!.once("exit", r));
      prometheus.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (prometheus.exitCode === null) prometheus.kill("SIGKILL");
    }
    await apiServer?.server.close();
    await new Promise((r) => receiver?.close(r));
    await Promise.all(workers.map((w) => w.close(1000)));
    rmSync(dir, { recursive: true, force: true });
  });

  it("ships a Prometheus config and alert rules that promtool accepts", () => {
    const out = execFileSync("promtool", ["check", "config", SHIPPED_CONFIG], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    expect(out).toContain("SUCCESS");
    expect(out).not.toContain("WARNING");
  });

  it("ships dashboards with a datasource variable and no hard-coded data source", () => {
    expect(DASHBOARDS).toContain(DASHBOARD);
    expect(DASHBOARDS.length).toBeGreaterThanOrEqual(2);
    for (const file of DASHBOARDS) {
      const dash = JSON.parse(readFileSync(file, "utf8")) as Dashboard;
      const vars = Object.fromEntries(dash.templating.list.map((v) => [v.name, v]));
      expect(vars.datasource, file).toMatchObject({ type: "datasource", query: "prometheus" });
      for (const name of file === DASHBOARD ? ["queue", "provider"] : ["queue"]) {
        expect(vars[name]?.type).toBe("query");
        expect(JSON.stringify(vars[name]?.query)).toContain("label_values(");
        expect(vars[name]?.datasource?.uid).toBe("${datasource}");
      }
      for (const p of panelsOf(dash.panels).filter((p) => p.type !== "row")) {
        expect(p.datasource?.uid, p.title).toBe("${datasource}");
        for (const t of p.targets ?? []) expect(t.datasource?.uid ?? "${datasource}", p.title).toBe("${datasource}");
      }
    }
  });

  it("evaluates every panel query with data from a batch of every status", async () => {
    const expected: { spec: Record<string, unknown>; status: JobResult["status"]; reason?: string }[] = [
      // Slow jobs first, so the others wait and the backlog gauges see a queue.
      ...Array.from({ length: 4 }, () => ({ spec: { kind: "shell", script: "sleep 2" }, status: "succeeded" as const })),
      { spec: { kind: "shell", script: "echo hi" }, status: "succeeded" },
      { spec: { kind: "python", code: "print(open('in.txt').read())", files: { "in.txt": "hydrated" } }, status: "succeeded" },
      { spec: { kind: "shell", script: "printf '%020000d' 0 > blob; echo done", workspace: { persist: true } }, status: "succeeded" },
      { spec: { kind: "shell", script: "exit 3" }, status: "failed" },
      { spec: { kind: "shell", script: "sleep 30", limits: { timeoutMs: 300 } }, status: "timed_out" },
      { spec: { kind: "python", code: "x = bytearray(300 * 1024 * 1024)", limits: { memoryMb: 64 } }, status: "killed", reason: "memory" },
      { spec: { kind: "shell", script: "for i in $(seq 40); do sleep 1 & done; wait", limits: { pids: 12 } }, status: "killed", reason: "pids" },
      { spec: { kind: "shell", script: "yes sandqueue", limits: { maxOutputBytes: 10_000 } }, status: "killed", reason: "output" },
      { spec: { kind: "shell", script: "true", image: "no-such-image" }, status: "error" },
    ];
    const ids = (await client.enqueueMany(expected.map((e) => e.spec))).map((j) => j.id);
    // Traffic through the API too: jobs (one with a webhook), a long-poll, refusals.
    const token = await apiServer.key("dashboard", { callbacks: true });
    const viaApi = await api(apiServer.url, token, "POST", "/v1/jobs", {
      kind: "shell",
      script: "echo via api",
      callbackUrl: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`,
    });
    expect(viaApi.status).toBe(202);
    expect((await api(apiServer.url, token, "POST", "/v1/jobs", { kind: "shell" })).status).toBe(422);
    expect((await api(apiServer.url, null, "GET", `/v1/jobs/${viaApi.json.id}`)).status).toBe(401);
    const results = await Promise.all(ids.map((id) => client.waitForResult(id, { timeoutMs: 45_000 })));
    expect((await api(apiServer.url, token, "GET", `/v1/jobs/${viaApi.json.id}?wait=30s`)).json.result.status).toBe("succeeded");
    await until("the webhook delivered", async () => ((await api(apiServer.url, null, "GET", "/metrics")).text.match(/outcome="delivered"\} 1/) ? true : undefined));
    expect(results.map((r) => [r.status, r.reason])).toEqual(expected.map((e) => [e.status, e.reason ?? null]));
    expect(results[6]!.snapshot?.bytes).toBeGreaterThan(20_000);

    const want: Record<string, number> = {};
    for (const e of expected) want[e.status] = (want[e.status] ?? 0) + 1;
    want.succeeded = (want.succeeded ?? 0) + 1; // the API's job
    // Wait until Prometheus has the final counts from both workers, then a few
    // more scrapes so every series has enough samples for rate().
    await until("final job counts in prometheus", async () => {
      const r = await query(`sum by (status) (sandqueue_jobs_finished_total{queue="${queue}"})`);
      const got = Object.fromEntries(r.data.result.map((s) => [s.metric.status!, Number(s.value[1])]));
      return JSON.stringify(got, Object.keys(want).sort()) === JSON.stringify(want, Object.keys(want).sort()) ? got : undefined;
    });
    await new Promise((r) => setTimeout(r, 3500));

    // Facts behind the panels: both workers report, the backlog was seen, every phase was timed.
    const scalar = async (expr: string): Promise<number> => Number((await query(expr)).data.result[0]?.value[1] ?? NaN);
    expect(await scalar(`count(sandqueue_worker_concurrency{queue="${queue}"})`)).toBe(2);
    expect(await scalar(`max(max_over_time(sandqueue_queue_jobs{queue="${queue}",state="waiting"}[5m]))`)).toBeGreaterThan(0);
    expect(await scalar(`max(max_over_time(sandqueue_queue_oldest_waiting_age_seconds{queue="${queue}"}[5m]))`)).toBeGreaterThan(0);
    expect(await scalar(`max(max_over_time(sandqueue_sandboxes_in_use{queue="${queue}"}[5m]))`)).toBeGreaterThan(0);
    expect(await scalar(`sum(sandqueue_snapshot_bytes_total{queue="${queue}"})`)).toBeGreaterThan(20_000);
    // The unknown image failed in acquire (only this test's two workers are scraped).
    expect(await scalar(`sum(sandqueue_provider_errors_total{operation="acquire"})`)).toBeGreaterThanOrEqual(1);
    // The first job of each series shows in rate() (series start at 0).
    expect(await scalar(`sum(increase(sandqueue_jobs_finished_total{queue="${queue}",status="timed_out"}[5m]))`)).toBeGreaterThan(0.5);
    expect(await scalar(`histogram_quantile(0.5, sum by (le) (rate(sandqueue_job_phase_duration_seconds_bucket{queue="${queue}",phase="total"}[5m])))`)).toBeGreaterThan(0);
    const phases = (await query(`count by (phase) (sandqueue_job_phase_duration_seconds_count{queue="${queue}"})`)).data.result.map((s) => s.metric.phase);
    expect(phases.sort()).toEqual(["acquire", "exec", "hydrate", "queued", "snapshot", "total"]);
    // No series carries a job id.
    const series = await (await fetch(`${promUrl}/api/v1/series?${new URLSearchParams({ "match[]": `{__name__=~"sandqueue_.+",queue="${queue}"}` })}`)).json() as { data: Record<string, string>[] };
    const labelText = JSON.stringify(series.data);
    for (const id of ids) expect(labelText).not.toContain(id);

    // Template variables resolve to this test's queue and provider.
    const labelValues = async (label: string, match: string): Promise<string[]> =>
      ((await (await fetch(`${promUrl}/api/v1/label/${label}/values?${new URLSearchParams({ "match[]": match })}`)).json()) as { data: string[] }).data;
    expect(await labelValues("queue", "sandqueue_worker_concurrency")).toContain(queue);
    expect(await labelValues("provider", `sandqueue_sandboxes_in_use{queue=~"${queue}"}`)).toEqual(["local"]);

    const vars = { queue, provider: "local", key: ".*", __rate_interval: "2m", __interval: "15s", __range: "10m", __range_s: "600" };
    expect(await labelValues("queue", "sandqueue_api_requests_total")).toContain(queue);
    expect(await labelValues("key", `sandqueue_api_jobs_submitted_total{queue="${queue}"}`)).toEqual(["dashboard"]);
    const problems: string[] = [];
    let evaluated = 0;
    for (const panel of DASHBOARDS.flatMap((f) => panelsOf((JSON.parse(readFileSync(f, "utf8")) as Dashboard).panels))) {
      for (const target of panel.targets ?? []) {
        const expr = expand(target.expr, vars);
        const r = await query(expr);
        evaluated++;
        if (r.status !== "success") problems.push(`${panel.title} [${target.refId}]: ${r.error} in ${expr}`);
        else if (r.data.result.length === 0) problems.push(`${panel.title} [${target.refId}]: no series for ${expr}`);
        else if (!r.data.result.some((s) => Number.isFinite(Number(s.value[1])))) problems.push(`${panel.title} [${target.refId}]: only NaN/Inf for ${expr}`);
      }
    }
    expect(evaluated).toBeGreaterThanOrEqual(35);
    expect(problems).toEqual([]);
  });
});
