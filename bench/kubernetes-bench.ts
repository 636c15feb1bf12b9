/**
 * `npm run bench -- kubernetes`: what the kubernetes provider adds per job.
 * One job = acquire, put a one-file tar into /workspace, run
 * `python3 -c` reading it, release; at concurrency 1, timed until the exec
 * returns (release runs after, untimed, as the worker does it in the
 * background). Through the kubernetes provider (warm pool of 1: pod
 * adoption patch, WebSocket exec, the put carried by the exec) against the
 * Kubernetes stand-in (its own process, as an API server is;
 * SANDQUEUE_BENCH_STANDIN=inprocess runs it in the bench's process), vs the
 * same job on the local provider directly: the stand-in's pods are local
 * sandboxes, so the difference is the provider's API calls, the exec
 * protocol and the stand-in's serving of them. Interleaved in one run.
 *
 * Taking a pooled pod starts the pool's refill (create a pod, read it until
 * it runs) and the pod's adoption patch, beside the job. On a cluster that
 * work is the API server's and the node's, on other machines; here the
 * stand-in and its sandboxes share the bench's cores, so it slows the job
 * down as no cluster would. Each kubernetes job is therefore timed twice
 * over, interleaved: "settled" waits (untimed) after acquire for the refill
 * and the patch to finish before the put and exec (the job's own path,
 * the target's figure), "beside" lets them run with the job as a worker's
 * would on one machine with its cluster.
 * Needs root and bubblewrap.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, rmdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import os from "node:os";
import path from "node:path";
import { KubeConfig, NetworkingV1Api } from "@kubernetes/client-node";
import { filesToTar } from "../providers/archive/index.js";
import { KubernetesProvider } from "../providers/kubernetes/index.js";
import { LocalProvider } from "../providers/local/index.js";
import type { KubeSandbox } from "../providers/kubernetes/kube-sandbox.js";
import type { Sandbox, SandboxProvider, SandboxSpec } from "../providers/provider.js";
import { KubernetesStandin } from "../standins/kubernetes/index.js";
import { fmt, stats, type RunStats } from "./stats.js";

const NS = "sandqueue-sandboxes";

export interface KubernetesBenchResult {
  /** Where the stand-in ran. */
  standin: "process" | "in-process";
  local: RunStats;
  /** Through the provider, the pool's refill and the adoption patch finished before the put and exec. */
  kubernetes: RunStats;
  /** Through the provider, the refill and patch running beside the job. */
  kubernetesBeside: RunStats;
  /** Each phase's p50 through the provider (settled), ms. */
  phases: { acquire: number; put: number; exec: number };
  besidePhases: { acquire: number; put: number; exec: number };
  localPhases: { acquire: number; put: number; exec: number };
}

const spec: SandboxSpec = {
  image: "host",
  limits: { memoryMb: 256, pids: 64 },
  network: "none",
  labels: {},
  annotations: {},
  maxLifetimeMs: 60_000,
};

const p50 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

/** One job; the phases' durations. `settle`: awaited untimed between acquire and put. */
async function job(p: SandboxProvider, i: number, settle?: (box: Sandbox) => Promise<void>): Promise<{ acquire: number; put: number; exec: number; release: Promise<void> }> {
  const t0 = performance.now();
  const box = await p.acquire(spec, {});
  const acquire = performance.now() - t0;
  if (settle) await settle(box);
  const t1 = performance.now();
  await box.putArchive("/workspace", filesToTar({ "in.txt": `job ${i}\n` }));
  const t2 = performance.now();
  const r = await box.exec({
    argv: ["python3", "-c", "print(open('in.txt').read(), end='')"],
    env: { PATH: "/usr/local/bin:/usr/bin:/bin" },
    timeoutMs: 10_000,
    maxOutputBytes: 1 << 20,
  });
  const t3 = performance.now();
  if (r.stdout.toString() !== `job ${i}\n`) throw new Error(`job ${i}: unexpected output ${JSON.stringify(r.stdout.toString())} (${r.stderr.toString()})`);
  return { acquire, put: t2 - t1, exec: t3 - t2, release: box.release() };
}

/** The stand-in as its own process (`npm run standin -- kubernetes`), as an API server is; resolves once its kubeconfig is written. */
async function standinProcess(kubeconfig: string, workRoot: string): Promise<ChildProcess> {
  const cli = fileURLToPath(new URL("../standins/cli.js", import.meta.url));
  const child = spawn(
    process.execPath,
    ["--", cli, "kubernetes", "--kubeconfig", kubeconfig, "--namespace", NS, "--image", "python:3.12-slim=host", "--default-image", "none", "--work-root", workRoot],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  const exited = new Promise((r) => child.once("exit", r));
  for (let i = 0; !existsSync(kubeconfig); i++) {
    if (child.exitCode !== null || i > 300) throw new Error("the Kubernetes stand-in did not start");
    await Promise.race([new Promise((r) => setTimeout(r, 100)), exited]);
  }
  return child;
}

export async function runKubernetesBench(opts: { n?: number; warmup?: number; inProcess?: boolean } = {}): Promise<KubernetesBenchResult> {
  const n = opts.n ?? 60;
  const warmup = opts.warmup ?? 5;
  const dir = await mkdtemp(path.join(os.tmpdir(), "sandqueue-k8s-bench-"));
  const local = new LocalProvider({ workRoot: path.join(dir, "local"), cgroupParent: `sandqueue-k8s-bench-local-${process.pid}` });
  const kubeconfig = path.join(dir, "kubeconfig");
  // Default: the stand-in in its own process (an API server does not share the worker's event loop).
  const inProcess = opts.inProcess ?? process.env.SANDQUEUE_BENCH_STANDIN === "inprocess";
  const behind = inProcess ? new LocalProvider({ workRoot: path.join(dir, "standin"), cgroupParent: `sandqueue-k8s-bench-${process.pid}` }) : null;
  const standin = behind ? await KubernetesStandin.start({ provider: behind, namespaces: [NS], images: { "python:3.12-slim": "host" }, defaultImage: null }) : null;
  const child = behind ? null : await standinProcess(kubeconfig, path.join(dir, "standin"));
  let kube: KubernetesProvider | undefined;
  try {
    if (standin) await standin.writeKubeconfig(kubeconfig, NS);
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    await kc.makeApiClient(NetworkingV1Api).createNamespacedNetworkPolicy({
      namespace: NS,
      body: { metadata: { name: "deny" }, spec: { podSelector: {}, policyTypes: ["Ingress", "Egress"] } },
    });
    kube = new KubernetesProvider({
      kubeConfig: kc,
      namespace: NS,
      images: { host: "python:3.12-slim" },
      owner: `bench-${process.pid}`,
      pool: { minIdle: 1, maxSize: 2 },
    });
    await kube.checkNetworkPolicy();
    kube.prewarm(spec);
    type Times = Array<Awaited<ReturnType<typeof job>>>;
    const times = { local: [] as Times, kubernetes: [] as Times, kubernetesBeside: [] as Times };
    // The pool's refill (started by the take) and the pod's adoption patch, awaited untimed.
    const settled = async (box: Sandbox): Promise<void> => {
      await kube!.pool.waitReady();
      await (box as KubeSandbox).adopted;
    };
    for (let i = 0; i < warmup + n; i++) {
      // Interleaved: all see the same machine state. Each starts with a ready pod in the pool, as a worker's next job does.
      for (const name of ["local", "kubernetes", "kubernetesBeside"] as const) {
        if (name !== "local") await kube.pool.waitReady();
        const t = name === "local" ? await job(local, i) : await job(kube, i, name === "kubernetes" ? settled : undefined);
        await t.release;
        if (i >= warmup) times[name].push(t);
      }
    }
    const total = (xs: Times) => xs.map((t) => t.acquire + t.put + t.exec);
    const wall = (xs: Times) => total(xs).reduce((a, b) => a + b, 0);
    const phases = (xs: Times) => ({ acquire: p50(xs.map((t) => t.acquire)), put: p50(xs.map((t) => t.put)), exec: p50(xs.map((t) => t.exec)) });
    return {
      standin: inProcess ? "in-process" : "process",
      local: stats(total(times.local), wall(times.local)),
      kubernetes: stats(total(times.kubernetes), wall(times.kubernetes)),
      kubernetesBeside: stats(total(times.kubernetesBeside), wall(times.kubernetesBeside)),
      phases: phases(times.kubernetes),
      besidePhases: phases(times.kubernetesBeside),
      localPhases: phases(times.local),
    };
  } finally {
    await kube?.close().catch(() => undefined);
    await standin?.stop();
    await behind?.close();
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    }
    await local.close();
    for (const d of [...(behind?.cgroupParentDirs ?? []), ...local.cgroupParentDirs]) await rmdir(d).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

export function reportKubernetesBench(r: KubernetesBenchResult): string {
  const ph = (x: { acquire: number; put: number; exec: number }) => `acquire ${x.acquire.toFixed(2)} / put ${x.put.toFixed(2)} / exec ${x.exec.toFixed(2)} ms`;
  const added = (k: RunStats) => `p50 +${(k.p50Ms - r.local.p50Ms).toFixed(2)} ms, ratio ${(k.p50Ms / r.local.p50Ms).toFixed(2)}`;
  return [
    `  local provider directly                          ${fmt(r.local)}   (${ph(r.localPhases)})`,
    `  kubernetes provider (stand-in, ${r.standin.padEnd(10)}), settled ${fmt(r.kubernetes)}   (${ph(r.phases)})`,
    `  kubernetes provider, refill beside the job        ${fmt(r.kubernetesBeside)}   (${ph(r.besidePhases)})`,
    `  added by the provider (API + WebSocket exec + carried tar, and the stand-in serving them): ${added(r.kubernetes)} (target <= +10 ms)`,
    `  added with the pool's refill and the adoption patch running beside the job on the same cores: ${added(r.kubernetesBeside)}`,
  ].join("\n");
}
