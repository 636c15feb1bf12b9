/**
 * One Kubernetes stand-in per test file (standins/kubernetes), its pods real
 * bubblewrap sandboxes of a LocalProvider, with a sandbox namespace that has
 * the default-deny NetworkPolicy of deploy/kubernetes/sandbox-namespace.yaml.
 * Needs root and bubblewrap; fails, never skips, without them.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, rmdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import os from "node:os";
import path from "node:path";
import { KubeConfig, NetworkingV1Api, CoreV1Api } from "@kubernetes/client-node";
import { LocalProvider } from "../../providers/local/index.js";
import { KubernetesStandin, type StandinOptions } from "../../standins/kubernetes/index.js";
import { requireCommand } from "./harness.js";

export const SANDBOX_NS = "sandqueue-sandboxes";
/** The job image the tests name, and the container image it maps to (the stand-in runs it as `host`). */
export const JOB_IMAGE = "host";
export const POD_IMAGE = "python:3.12-slim";

export interface StandinRig {
  standin: KubernetesStandin;
  local: LocalProvider;
  kc: KubeConfig;
  kubeconfigFile: string;
  core: CoreV1Api;
  dir: string;
  stop(): Promise<void>;
}

export const DEFAULT_DENY = {
  apiVersion: "networking.k8s.io/v1",
  kind: "NetworkPolicy",
  metadata: { name: "sandqueue-default-deny" },
  spec: { podSelector: {}, policyTypes: ["Ingress", "Egress"] },
};

export async function startStandin(tag: string, opts: Partial<StandinOptions> & { withPolicy?: boolean } = {}): Promise<StandinRig> {
  requireCommand("bwrap", "bubblewrap");
  const dir = await mkdtemp(path.join(os.tmpdir(), `sandqueue-k8s-${tag}-`));
  const local = new LocalProvider({ workRoot: path.join(dir, "work"), cgroupParent: `sandqueue-k8s-${tag}-${process.pid}` });
  const standin = await KubernetesStandin.start({
    provider: local,
    namespaces: [SANDBOX_NS],
    images: { [POD_IMAGE]: "host" },
    defaultImage: null,
    ...opts,
  });
  const kubeconfigFile = path.join(dir, "kubeconfig");
  await standin.writeKubeconfig(kubeconfigFile, SANDBOX_NS);
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfigFile);
  if (opts.withPolicy !== false) {
    await kc.makeApiClient(NetworkingV1Api).createNamespacedNetworkPolicy({ namespace: SANDBOX_NS, body: DEFAULT_DENY });
  }
  return {
    standin,
    local,
    kc,
    kubeconfigFile,
    core: kc.makeApiClient(CoreV1Api),
    dir,
    async stop() {
      await standin.stop();
      await local.close();
      for (const d of local.cgroupParentDirs ?? []) await rmdir(d).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Names of the pods (any phase) carrying these labels. */
export async function podsWith(core: CoreV1Api, labels: Record<string, string>, namespace = SANDBOX_NS): Promise<string[]> {
  const labelSelector = Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(",");
  const list = await core.listNamespacedPod({ namespace, labelSelector });
  return list.items.map((p) => p.metadata!.name!).sort();
}

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** Debian's kubectl 1.20: where scripts/setup.d/kubectl.sh unpacked it, or /usr/bin/kubectl when that is the Debian package. */
export async function debianKubectl(): Promise<string> {
  for (const candidate of [path.join(REPO, ".sandqueue/kubernetes-client/usr/bin/kubectl"), "/usr/bin/kubectl"]) {
    if (!existsSync(candidate)) continue;
    const { stdout } = await promisify(execFile)(candidate, ["version", "--client", "--short"]).catch(() => ({ stdout: "" }));
    if (stdout.includes("v1.20.")) return candidate;
  }
  throw new Error("Debian's kubectl 1.20 not found: install the Debian package 'kubernetes-client' (npm run setup does, scripts/setup.d/kubectl.sh)");
}
