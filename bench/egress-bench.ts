/**
 * Egress benchmark (`npm run bench -- egress`): 1 KiB GETs by one Python
 * http.client program (keep-alive, a connection per thread), run
 *   - directly against the upstream, on the host, outside any sandbox
 *     (the baseline), and
 *   - inside a local sandbox with `network: "proxy"`, through the bridge
 *     in its namespace and this process's egress proxy (the worker's path),
 * interleaved in the same run, sequential (p50) and with 4 connections
 * (throughput). Targets: proxied throughput >= 0.8x direct, p50 <= direct
 * + 2 ms. Then the worker's RSS growth with 50 concurrent policies (50
 * sandboxes, each with its own 20-rule policy and traffic through it at
 * once): target < 32 MiB. The upstream runs in a child process, so this
 * process is the worker alone.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { parseJobSpec } from "../producer/job-spec.js";
import type { NetworkPolicy } from "../producer/network-policy.js";
import { LocalProvider } from "../providers/local/index.js";
import { EGRESS_SOCKET, type Sandbox } from "../providers/provider.js";
import { DEFAULT_EGRESS_CONFIG } from "../worker/egress/config.js";
import { EgressGateway, type EgressJobSession } from "../worker/egress/gateway.js";
import { quantile } from "./stats.js";

const run = promisify(execFile);
const PYTHON = "/usr/bin/python3";
const MiB = 1024 * 1024;
const SEQ_REQUESTS = Number(process.env.SANDQUEUE_BENCH_EGRESS_N ?? 2000);
const THREADS = 4;
const ROUNDS = 3;
const POLICIES = 50;
/** Rounds of 50 concurrent policy jobs: growth that keeps climbing would be a leak, a plateau is the working set. */
const RSS_ROUNDS = 4;

/** The client: `MODE HOST PORT N THREADS`; MODE proxy reads HTTP_PROXY. Prints per-request ms (JSON) and wall ms. */
const CLIENT = `
import http.client, json, os, sys, threading, time
mode, host, port, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        import socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.host)
if mode == "proxy":
    ph, pp = os.environ["HTTP_PROXY"].split("//", 1)[1].rstrip("/").rsplit(":", 1)
    target, url = (ph, int(pp)), f"http://{host}:{port}/1k"
elif mode.startswith("unix:"):
    target, url = (mode[5:], 0), f"http://{host}:{port}/1k"
else:
    target, url = ("127.0.0.1", port), "/1k"
lat = []
if mode in ("urllib-direct", "urllib-proxy"):
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({} if mode == "urllib-direct" else None))
    target_url = f"http://{'127.0.0.1' if mode == 'urllib-direct' else host}:{port}/1k"
def work_urllib():
    mine = []
    for _ in range(n):
        t = time.perf_counter_ns()
        body = opener.open(target_url).read()
        if len(body) != 1024:
            sys.exit(f"bad answer {len(body)}")
        mine.append((time.perf_counter_ns() - t) / 1e6)
    lat.extend(mine)
def work():
    c = (UnixConnection if mode.startswith("unix:") else http.client.HTTPConnection)(*target)
    mine = []
    for _ in range(n):
        t = time.perf_counter_ns()
        c.request("GET", url, headers={"Host": f"{host}:{port}"})
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or len(body) != 1024:
            sys.exit(f"bad answer {r.status} {len(body)}")
        mine.append((time.perf_counter_ns() - t) / 1e6)
    lat.extend(mine)
t0 = time.perf_counter_ns()
ts = [threading.Thread(target=work_urllib if mode.startswith("urllib-") else work) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"wallMs": (time.perf_counter_ns() - t0) / 1e6, "lat": lat}))
`;

const UPSTREAM = `
const http = require("node:http");
const body = Buffer.alloc(1024, 120);
const s = http.createServer({ keepAliveTimeout: 60000 }, (req, res) => {
  res.writeHead(200, { "content-type": "application/octet-stream", "content-length": body.length });
  res.end(body);
});
s.listen(0, "127.0.0.1", () => console.log(s.address().port));
`;

interface Measure {
  p50Ms: number;
  perSec: number;
}

function parse(stdout: string): Measure {
  const r = JSON.parse(stdout) as { wallMs: number; lat: number[] };
  return { p50Ms: quantile(r.lat, 0.5), perSec: (r.lat.length * 1000) / r.wallMs };
}

async function startUpstream(): Promise<{ port: number; proc: ChildProcess }> {
  const proc = spawn(process.execPath, ["-e", UPSTREAM], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve, reject) => {
    proc.stdout!.once("data", (d: Buffer) => resolve(Number(d.toString().trim())));
    proc.once("exit", (c) => reject(new Error(`upstream exited (${c})`)));
  });
  return { port, proc };
}

function policy(network: unknown): NetworkPolicy {
  const spec = parseJobSpec({ kind: "shell", script: "true", network });
  if (spec.network === "none") throw new Error("expected a policy");
  return spec.network;
}

const SPEC = (network: "proxy") => ({ image: "host", limits: { memoryMb: 512, pids: 64 }, network, labels: {}, annotations: {}, maxLifetimeMs: 600_000 });

export async function runEgressBench(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "sandq-egress-bench-"));
  const hostsFile = join(dir, "hosts");
  writeFileSync(hostsFile, "127.0.0.1 bench.test\n");
  const upstream = await startUpstream();
  const gateway = new EgressGateway({ ...DEFAULT_EGRESS_CONFIG, hostsFile, allowPrivate: true });
  const provider = new LocalProvider({ workRoot: join(dir, "work") });
  const args = (mode: string, n: number, threads: number) => [mode, "bench.test", String(upstream.port), String(n), String(threads)];
  try {
    const box = await provider.acquire(SPEC("proxy"), {});
    const session = await gateway.open({ jobId: "bench", policy: policy({ default: "deny", egress: ["bench.test"] }), boundSecrets: {}, sandbox: box.egress! });
    const direct = async (n: number, threads: number, mode = "direct"): Promise<Measure> => parse((await run(PYTHON, ["-c", CLIENT, ...args(mode, n, threads)], { maxBuffer: 64 * MiB })).stdout);
    const proxied = async (n: number, threads: number, mode = "proxy"): Promise<Measure> => {
      const r = await box.exec({ argv: [PYTHON, "-c", CLIENT, ...args(mode, n, threads)], env: { PATH: "/usr/bin:/bin", ...session.proxyEnv }, timeoutMs: 300_000, maxOutputBytes: 64 * MiB });
      if (r.exitCode !== 0) throw new Error(`proxied client failed: ${r.stderr.toString()}`);
      return parse(r.stdout.toString());
    };
    // Warm-up: code paths, the proxy's upstream connections.
    await direct(200, 1);
    await proxied(200, 1);
    // The proxy alone: the same client on the host, on the job's unix socket (no sandbox, no bridge).
    const socketOnly = async (n: number, threads: number): Promise<Measure> =>
      parse((await run(PYTHON, ["-c", CLIENT, ...args(`unix:${join(box.egress!.hostDir, EGRESS_SOCKET)}`, n, threads)], { maxBuffer: 64 * MiB })).stdout);
    const results = {
      seqDirect: [] as Measure[],
      seqProxy: [] as Measure[],
      seqSocket: [] as Measure[],
      parDirect: [] as Measure[],
      parProxy: [] as Measure[],
      urlDirect: [] as Measure[],
      urlProxy: [] as Measure[],
    };
    for (let round = 0; round < ROUNDS; round++) {
      results.seqDirect.push(await direct(SEQ_REQUESTS, 1));
      results.seqProxy.push(await proxied(SEQ_REQUESTS, 1));
      results.seqSocket.push(await socketOnly(SEQ_REQUESTS, 1));
      results.parDirect.push(await direct(SEQ_REQUESTS / THREADS, THREADS));
      results.parProxy.push(await proxied(SEQ_REQUESTS / THREADS, THREADS));
      results.urlDirect.push(await direct(SEQ_REQUESTS / 4, 1, "urllib-direct"));
      results.urlProxy.push(await proxied(SEQ_REQUESTS / 4, 1, "urllib-proxy"));
    }
    await session.close();
    await box.release();
    const med = (ms: Measure[], k: keyof Measure): number => quantile(ms.map((m) => m[k]), 0.5);
    const line = (label: string, ms: Measure[]) => `  ${label.padEnd(38)} ${med(ms, "perSec").toFixed(0).padStart(6)}/s  p50 ${med(ms, "p50Ms").toFixed(3)} ms`;
    console.log(`1 KiB GETs, Python http.client with keep-alive, median of ${ROUNDS} rounds of ${SEQ_REQUESTS}`);
    console.log(line("direct, 1 connection (host)", results.seqDirect));
    console.log(line("sandbox -> proxy, 1 connection", results.seqProxy));
    console.log(line("host -> proxy's socket (no bridge)", results.seqSocket));
    console.log(line(`direct, ${THREADS} connections (host)`, results.parDirect));
    console.log(line(`sandbox -> proxy, ${THREADS} connections`, results.parProxy));
    const tSeq = med(results.seqProxy, "perSec") / med(results.seqDirect, "perSec");
    const tPar = med(results.parProxy, "perSec") / med(results.parDirect, "perSec");
    const dP50 = med(results.seqProxy, "p50Ms") - med(results.seqDirect, "p50Ms");
    console.log(`  throughput proxied/direct: ${tSeq.toFixed(2)}x (1 connection), ${tPar.toFixed(2)}x (${THREADS} connections) (target >= 0.8x)`);
    console.log(`  p50 added by sandbox + bridge + proxy: ${dP50 >= 0 ? "+" : ""}${dP50.toFixed(3)} ms (target <= +2 ms)`);
    console.log(`Python urllib.request.urlopen, a connection per request (how most scripts fetch), ${SEQ_REQUESTS / 4} requests:`);
    console.log(line("direct (host)", results.urlDirect));
    console.log(line("sandbox -> proxy (HTTP_PROXY)", results.urlProxy));
    const uT = med(results.urlProxy, "perSec") / med(results.urlDirect, "perSec");
    const uP = med(results.urlProxy, "p50Ms") - med(results.urlDirect, "p50Ms");
    console.log(`  throughput proxied/direct: ${uT.toFixed(2)}x (target >= 0.8x); p50 ${uP >= 0 ? "+" : ""}${uP.toFixed(3)} ms (target <= +2 ms)`);

    if (process.env.SANDQUEUE_BENCH_EGRESS_RSS !== "0") await rssWithPolicies(provider, gateway, upstream.port);
  } finally {
    await provider.close().catch(() => undefined);
    await gateway.close();
    upstream.proc.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** RSS growth of this process (the worker) while 50 jobs, each under its own policy, send traffic at once. */
async function rssWithPolicies(provider: LocalProvider, gateway: EgressGateway, port: number): Promise<void> {
  const rules = (i: number) => [...Array.from({ length: 19 }, (_, k) => ({ host: `h${k}.policy${i}.example`, methods: ["GET"], paths: ["/v1/*"], ratePerMinute: 600 })), "bench.test"];
  const client = `for i in $(seq 5); do curl -s -o /dev/null ${Array.from({ length: 20 }, () => `http://bench.test:${port}/1k`).join(" ")}; done; sleep 1`;
  const round = async (): Promise<void> => {
    const boxes: Sandbox[] = [];
    const sessions: EgressJobSession[] = [];
    try {
      for (let i = 0; i < POLICIES; i++) {
        const box = await provider.acquire(SPEC("proxy"), {});
        boxes.push(box);
        sessions.push(await gateway.open({ jobId: `rss-${i}`, policy: policy({ default: "deny", egress: rules(i) }), boundSecrets: {}, sandbox: box.egress! }));
      }
      const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
      try {
        const results = await Promise.all(
          boxes.map((box, i) => box.exec({ argv: ["/bin/sh", "-c", client], env: { PATH: "/usr/bin:/bin", ...sessions[i]!.proxyEnv }, timeoutMs: 300_000, maxOutputBytes: MiB })),
        );
        const bad = results.find((r) => r.exitCode !== 0);
        if (bad) throw new Error(`a policy job failed: ${bad.stderr.toString()}`);
      } finally {
        clearInterval(sampler);
      }
    } finally {
      await Promise.all(sessions.map((s) => s.close()));
      await Promise.all(boxes.map((b) => b.release()));
    }
  };
  // From the worker as the single-job runs above left it (code loaded, one policy served), through
  // rounds of 50 at once: the first pays for what 50 sessions need, the later ones show what stays.
  const base = process.memoryUsage().rss;
  let peak = base;
  const peaks: number[] = [];
  for (let i = 0; i < RSS_ROUNDS; i++) {
    await round();
    peaks.push(peak);
  }
  const mib = (b: number): string => `+${((b - base) / MiB).toFixed(1)}`;
  console.log(
    `  worker RSS with ${POLICIES} concurrent policies (20 rules each, 100 GETs per job), peak per round: ${peaks.map(mib).join(", ")} MiB over ${(base / MiB).toFixed(0)} MiB (target < 32 MiB)`,
  );
}
