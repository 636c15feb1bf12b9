/**
 * deploy/kubernetes/: every manifest parses; the sandbox and worker
 * namespaces and the default-deny NetworkPolicy are created with Debian's
 * kubectl 1.20 against the Kubernetes stand-in, and the kubernetes provider
 * then starts on the shipped policy (and runs a job in that namespace).
 * What the stand-in does not serve (ServiceAccount, RBAC, Deployment,
 * ResourceQuota, KEDA, the Prometheus job) is checked offline against the
 * code it must agree with: the worker's own config parser, the provider's
 * API calls and pod spec, BullMQ's real wait-list key in Redis.
 */
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { Redis } from "ioredis";
import { NetworkingV1Api } from "@kubernetes/client-node";
import { DEFAULT_PREFIX } from "../../producer/redis.js";
import { configVariables, parseWorkerConfig } from "../../worker/config.js";
import { kubernetesDefinition } from "../../providers/kubernetes/definition.js";
import { sandboxPod } from "../../providers/kubernetes/index.js";
import { REDIS_URL, requireCommand, shellRequest, testClient, uniqueQueue } from "../support/harness.js";
import { debianKubectl, startStandin, type StandinRig } from "../support/kubernetes-standin.js";

const run = promisify(execFile);
const DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../deploy/kubernetes");

type Doc = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [k: string]: any };
const files = readdirSync(DIR).filter((f) => f.endsWith(".yaml")).sort();
const docsOf = (file: string): Doc[] => {
  const parsed = parseAllDocuments(readFileSync(path.join(DIR, file), "utf8"));
  return (Array.isArray(parsed) ? parsed : [parsed]).map((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
    return d.toJS() as Doc;
  });
};
const all = files.flatMap((f) => docsOf(f).map((d) => ({ file: f, doc: d })));
const one = (kind: string, name?: string): Doc => {
  const found = all.filter((x) => x.doc.kind === kind && (name === undefined || x.doc.metadata.name === name));
  expect(found, `${kind} ${name ?? ""}`).toHaveLength(1);
  return found[0]!.doc;
};

const deployment = () => one("Deployment");
const container = () => deployment().spec.template.spec.containers[0];
/** The Deployment's environment, a placeholder for values from Secrets. */
const deploymentEnv = (): Record<string, string> =>
  Object.fromEntries(container().env.map((e: any) => [e.name, e.value ?? (e.valueFrom?.secretKeyRef ? REDIS_URL : "")]));

describe("deploy/kubernetes manifests", () => {
  it("every file parses into objects with apiVersion, kind and name, namespaced where they must be", () => {
    expect(files).toEqual([
      "keda-scaledobject.yaml",
      "prometheus-scrape.yaml",
      "sandbox-namespace.yaml",
      "sandbox-quota.yaml",
      "worker-deployment.yaml",
      "worker-namespace.yaml",
      "worker-rbac.yaml",
    ]);
    const kinds = all.map((x) => x.doc.kind).sort();
    expect(kinds).toEqual([
      "ConfigMap", "Deployment", "Namespace", "Namespace", "NetworkPolicy", "ResourceQuota", "Role", "RoleBinding", "ScaledObject", "ServiceAccount", "TriggerAuthentication",
    ]);
    for (const { file, doc } of all) {
      expect(doc.apiVersion, file).toMatch(/^([a-z0-9.]+\/)?v\d+(alpha\d+|beta\d+)?$/);
      expect(doc.metadata.name, file).toMatch(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
      if (doc.kind !== "Namespace") expect(doc.metadata.namespace, `${file} ${doc.kind}`).toMatch(/^sandqueue(-sandboxes)?$/);
    }
  });

  it("the Deployment's environment is a valid worker configuration for the kubernetes provider, naming only variables the worker reads", () => {
    const env = deploymentEnv();
    const known = new Set([...configVariables().map((v) => v.env), ...Object.values(kubernetesDefinition.settings).map((s) => s.env)]);
    expect(Object.keys(env).filter((k) => !known.has(k))).toEqual([]);
    const config = parseWorkerConfig(env);
    expect(config).toMatchObject({ provider: "kubernetes", metricsHost: "0.0.0.0", queue: "sandqueue" });
    expect(config.providerSettings).toMatchObject({ namespace: "sandqueue-sandboxes", images: { host: "python:3.12-slim" }, cpu: "1" });
    const c = container();
    expect(c.ports).toContainEqual({ name: "metrics", containerPort: config.metricsPort });
    expect([c.readinessProbe.httpGet.path, c.livenessProbe.httpGet.path]).toEqual(["/readyz", "/healthz"]);
    expect(c.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } });
    expect(deployment().spec.template.spec.serviceAccountName).toBe(one("ServiceAccount").metadata.name);
    // REDIS_URL (it may hold a password) comes from a Secret, never a literal.
    expect(c.env.find((e: any) => e.name === "REDIS_URL").valueFrom.secretKeyRef).toMatchObject({ name: "sandqueue-redis", key: "url" });
  });

  it("the Role grants what the provider calls, in the sandbox namespace only, to the workers' ServiceAccount", () => {
    const role = one("Role");
    const ns = parseWorkerConfig(deploymentEnv()).providerSettings.namespace;
    expect(role.metadata.namespace).toBe(ns);
    const rules = Object.fromEntries(role.rules.flatMap((r: any) => r.resources.map((res: string) => [`${r.apiGroups[0] || "core"}/${res}`, [...r.verbs].sort()])));
    // Pods: create (acquire), get (readiness, OOM evidence), list (reap), patch (pool adoption), delete (release, reap).
    expect(rules).toEqual({
      "core/pods": ["create", "delete", "get", "list", "patch", "watch"],
      "core/pods/exec": ["create", "get"],
      "networking.k8s.io/networkpolicies": ["get", "list"],
    });
    const binding = one("RoleBinding");
    expect(binding.metadata.namespace).toBe(ns);
    expect(binding.roleRef).toMatchObject({ kind: "Role", name: role.metadata.name });
    const sa = one("ServiceAccount");
    expect(binding.subjects).toEqual([{ kind: "ServiceAccount", name: sa.metadata.name, namespace: deployment().metadata.namespace }]);
  });

  it("the ResourceQuota constrains only what every sandbox pod declares (a pod missing one would be refused)", () => {
    const quota = one("ResourceQuota");
    const settings = parseWorkerConfig(deploymentEnv()).providerSettings as any;
    const pod = sandboxPod(
      { name: "x", image: "python:3.12-slim", memoryMb: 256, labels: {}, annotations: {}, deadlineSeconds: 60 },
      { runAsUser: 65534, workspaceSizeMb: 256, tmpSizeMb: 64, nodeSelector: {}, tolerations: [], cpu: settings.cpu },
    );
    const res = pod.spec!.containers[0]!.resources!;
    for (const key of Object.keys(quota.spec.hard)) {
      if (key === "pods") continue;
      const [kind, resource] = key.split(".") as ["requests" | "limits", string];
      expect(res[kind]?.[resource], `quota ${key}`).toBeDefined();
    }
    expect(quota.metadata.namespace).toBe(settings.namespace);
  });

  it("the KEDA ScaledObject watches the list BullMQ really keeps the queue's waiting jobs in, and scales the Deployment", async () => {
    const so = one("ScaledObject");
    expect(so.spec.scaleTargetRef.name).toBe(deployment().metadata.name);
    const trigger = so.spec.triggers[0];
    expect(trigger.type).toBe("redis");
    const env = deploymentEnv();
    expect(trigger.metadata.listName).toBe(`${DEFAULT_PREFIX}:${env.SANDQUEUE_QUEUE}:wait`);
    expect(so.spec.triggers[0].authenticationRef.name).toBe(one("TriggerAuthentication").metadata.name);
    // The same key for a queue of ours, checked in real Redis: one job enqueued, one entry in that list.
    requireCommand("redis-server", "redis-server");
    const queue = uniqueQueue("keda");
    const client = testClient(queue);
    const redis = new Redis(REDIS_URL);
    try {
      await client.enqueue({ kind: "shell", script: "true" });
      expect(await redis.llen(trigger.metadata.listName.replace(env.SANDQUEUE_QUEUE, queue))).toBe(1);
    } finally {
      await client.close();
      redis.disconnect();
    }
  });

  it("the Prometheus job keeps the worker pods' metrics port", () => {
    const cm = one("ConfigMap");
    const jobs = parseYaml(cm.data["sandqueue-workers.yml"]) as any[];
    expect(jobs).toHaveLength(1);
    const job = jobs[0];
    expect(job.metrics_path).toBe("/metrics");
    expect(job.kubernetes_sd_configs[0]).toEqual({ role: "pod", namespaces: { names: [deployment().metadata.namespace] } });
    const keep = Object.fromEntries(job.relabel_configs.filter((r: any) => r.action === "keep").map((r: any) => [r.source_labels[0], r.regex]));
    expect(keep.__meta_kubernetes_pod_label_app_kubernetes_io_name).toBe(deployment().spec.template.metadata.labels["app.kubernetes.io/name"]);
    expect(container().ports.map((p: any) => p.name)).toContain(keep.__meta_kubernetes_pod_container_port_name);
  });
});

describe("deploy/kubernetes against the stand-in with kubectl 1.20", () => {
  let k8s: StandinRig;
  let kubectl: string;
  beforeAll(async () => {
    kubectl = await debianKubectl();
    k8s = await startStandin("deploy", { namespaces: [], withPolicy: false });
  });
  afterAll(async () => {
    await k8s?.stop();
  });
  const ctl = (...args: string[]) => run(kubectl, ["--kubeconfig", k8s.kubeconfigFile, ...args]);

  it("kubectl creates the namespaces and the default-deny policy; the provider refuses before, starts after, and runs a job there", async () => {
    const ctx = { workerId: "deploy-test", stateDir: k8s.dir, concurrency: 1 };
    const settings = { kubeconfig: k8s.kubeconfigFile, namespace: "sandqueue-sandboxes", images: { host: "python:3.12-slim" }, nodeSelector: {}, tolerations: [], poolMinIdle: 0, poolMaxSize: 0 } as never;
    await k8s.core.createNamespace({ body: { metadata: { name: "sandqueue-sandboxes" } } });
    await expect(kubernetesDefinition.create(settings, ctx)).rejects.toMatchObject({ code: "SANDQ_ERR_CONFIG_INVALID" });
    await k8s.core.deleteNamespace({ name: "sandqueue-sandboxes" });
    for (let i = 0; i < 100 && (await k8s.core.listNamespace()).items.some((n) => n.metadata?.name === "sandqueue-sandboxes"); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }

    const created = await ctl("create", "-f", path.join(DIR, "sandbox-namespace.yaml"), "-f", path.join(DIR, "worker-namespace.yaml"));
    expect(created.stdout.split("\n").filter(Boolean).sort()).toEqual([
      "namespace/sandqueue created",
      "namespace/sandqueue-sandboxes created",
      "networkpolicy.networking.k8s.io/sandqueue-default-deny created",
    ]);
    const got = JSON.parse((await ctl("get", "networkpolicy", "-n", "sandqueue-sandboxes", "-o", "json")).stdout);
    expect(got.items.map((p: any) => [p.metadata.name, p.spec.policyTypes])).toEqual([["sandqueue-default-deny", ["Ingress", "Egress"]]]);
    const np = await k8s.kc.makeApiClient(NetworkingV1Api).readNamespacedNetworkPolicy({ name: "sandqueue-default-deny", namespace: "sandqueue-sandboxes" });
    expect(np.spec?.podSelector).toEqual({});

    const provider = await kubernetesDefinition.create(settings, ctx);
    try {
      const box = await provider.acquire({ image: "host", limits: { memoryMb: 128, pids: 64 }, network: "none", labels: {}, annotations: {}, maxLifetimeMs: 60_000 }, {});
      expect((await box.exec(shellRequest("echo in $(pwd)"))).stdout.toString()).toBe("in /workspace\n");
      const pods = JSON.parse((await ctl("get", "pods", "-n", "sandqueue-sandboxes", "-l", "app.kubernetes.io/managed-by=sandqueue", "-o", "json")).stdout);
      expect(pods.items.map((p: any) => p.metadata.name)).toEqual([box.id]);
      await box.release();
    } finally {
      await provider.close();
    }
  });
});
