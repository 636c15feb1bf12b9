/** Registry entry of the kubernetes (one Pod per sandbox) provider. */
import { z } from "zod";
import { defineProvider } from "../definition.js";
import { settingTypes } from "../settings.js";

/** `a=b,c=d` pairs; keys and values trimmed. */
function pairs(what: string, keyRe: RegExp): { schema: z.ZodType<Record<string, string>, string>; accepts: string } {
  const accepts = `comma-separated ${what}`;
  return {
    accepts,
    schema: z.string().transform((s, ctx) => {
      const out: Record<string, string> = {};
      for (const part of s.split(",").map((p) => p.trim()).filter(Boolean)) {
        const i = part.indexOf("=");
        const key = i > 0 ? part.slice(0, i).trim() : "";
        if (!keyRe.test(key)) {
          ctx.addIssue({ code: "custom", message: `expected ${accepts}; ${JSON.stringify(part)} is not one` });
          return z.NEVER;
        }
        out[key] = part.slice(i + 1).trim();
      }
      return out;
    }),
  };
}

const tolerationSchema = z.strictObject({
  key: z.string().optional(),
  operator: z.enum(["Exists", "Equal"]).optional(),
  value: z.string().optional(),
  effect: z.enum(["NoSchedule", "PreferNoSchedule", "NoExecute"]).optional(),
  tolerationSeconds: z.number().int().optional(),
});
export type Toleration = z.infer<typeof tolerationSchema>;

const TOLERATIONS_ACCEPTS = 'a JSON array of tolerations, e.g. [{"key":"sandbox","operator":"Exists","effect":"NoSchedule"}]';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export const kubernetesDefinition = defineProvider({
  name: "kubernetes",
  summary: "one Pod per job on a Kubernetes cluster, exec over the API's WebSocket, files as tar over exec",
  settings: {
    kubeconfig: {
      env: "SANDQUEUE_K8S_KUBECONFIG",
      doc: "kubeconfig file; unset: $KUBECONFIG, ~/.kube/config, else the in-cluster service account",
      ...settingTypes.path(),
    },
    context: {
      env: "SANDQUEUE_K8S_CONTEXT",
      doc: "kubeconfig context to use (unset: its current context)",
      ...settingTypes.text("a context name"),
    },
    namespace: {
      env: "SANDQUEUE_K8S_NAMESPACE",
      doc: "namespace of the sandbox pods (must hold the default-deny NetworkPolicy)",
      default: () => "sandqueue-sandboxes",
      accepts: "a namespace name (DNS label)",
      schema: z.string().regex(DNS_LABEL, { error: "expected a namespace name (DNS label)" }),
    },
    images: {
      env: "SANDQUEUE_K8S_IMAGES",
      doc: "job image name → container image, e.g. host=python:3.12-slim; unmapped names are used as they are",
      ...pairs("name=image pairs", /^[A-Za-z0-9._:@/-]+$/),
    },
    runtimeClassName: {
      env: "SANDQUEUE_K8S_RUNTIME_CLASS",
      doc: "RuntimeClass of sandbox pods (gVisor, Kata…)",
      accepts: "a RuntimeClass name (DNS subdomain)",
      schema: z.string().regex(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, { error: "expected a RuntimeClass name (DNS subdomain)" }),
    },
    nodeSelector: {
      env: "SANDQUEUE_K8S_NODE_SELECTOR",
      doc: "node labels sandbox pods must land on, e.g. pool=sandboxes",
      ...pairs("label=value pairs", /^([a-z0-9.-]+\/)?[A-Za-z0-9._-]+$/),
    },
    tolerations: {
      env: "SANDQUEUE_K8S_TOLERATIONS",
      doc: "tolerations of sandbox pods",
      accepts: TOLERATIONS_ACCEPTS,
      schema: z.string().transform((s, ctx) => {
        let parsed: unknown;
        try {
          parsed = JSON.parse(s);
        } catch {
          ctx.addIssue({ code: "custom", message: `expected ${TOLERATIONS_ACCEPTS}: not JSON` });
          return z.NEVER;
        }
        const r = z.array(tolerationSchema).safeParse(parsed);
        if (!r.success) {
          const issue = r.error.issues[0];
          ctx.addIssue({ code: "custom", message: `expected ${TOLERATIONS_ACCEPTS}: at [${issue?.path.join("].")}] ${issue?.message}` });
          return z.NEVER;
        }
        return r.data;
      }),
    },
    cpu: {
      env: "SANDQUEUE_K8S_CPU",
      doc: "CPU limit (and request) of each sandbox pod, e.g. 1 or 500m (unset: none)",
      accepts: "a CPU quantity: a number or millicores (500m)",
      schema: z.string().regex(/^(\d+(\.\d+)?|\d+m)$/, { error: "expected a CPU quantity: a number or millicores (500m)" }),
    },
    workspaceSizeMb: {
      env: "SANDQUEUE_K8S_WORKSPACE_MB",
      doc: "sizeLimit of the /workspace emptyDir, MiB",
      default: () => "256",
      ...settingTypes.int(1, 1_048_576),
    },
    tmpSizeMb: {
      env: "SANDQUEUE_K8S_TMP_MB",
      doc: "sizeLimit of the /tmp emptyDir, MiB",
      default: () => "64",
      ...settingTypes.int(1, 1_048_576),
    },
    runAsUser: {
      env: "SANDQUEUE_K8S_RUN_AS_USER",
      doc: "uid (and gid) sandbox pods run as; never 0",
      default: () => "65534",
      ...settingTypes.int(1, 2_147_483_647),
    },
    startTimeoutMs: {
      env: "SANDQUEUE_K8S_START_TIMEOUT_MS",
      doc: "how long a pod may take to run (scheduling, image pull) before the attempt fails as retryable",
      default: () => "120000",
      ...settingTypes.int(1000, 3_600_000),
    },
    poolMinIdle: {
      env: "SANDQUEUE_POOL_MIN_IDLE",
      doc: "pods kept running ahead of demand per (image, limits)",
      default: () => "2",
      ...settingTypes.int(0, 64),
    },
    poolMaxSize: {
      env: "SANDQUEUE_POOL_MAX_SIZE",
      doc: "most ready pods kept in all",
      default: () => "4",
      ...settingTypes.int(0, 256),
    },
  },
  capabilities: {
    memoryLimit: true,
    // Kubernetes has no per-pod pids field: the node's podPidsLimit applies (docs/PROVIDERS.md).
    pidsLimit: false,
    // Memory kills: exit 137 with the container's OOMKilled reason.
    limitEvents: true,
    stdin: true,
    separateStderr: true,
    byteExactOutput: true,
    // Enforced by the default-deny NetworkPolicy the provider refuses to start without.
    networkIsolation: true,
    networkPolicy: false,
    hostWorkspace: false,
  },
  async create(s, ctx) {
    const { KubernetesProvider } = await import("./kubernetes-provider.js");
    const provider = new KubernetesProvider({
      ...(s.kubeconfig ? { kubeconfig: s.kubeconfig } : {}),
      ...(s.context ? { context: s.context } : {}),
      namespace: s.namespace ?? "sandqueue-sandboxes",
      images: s.images ?? {},
      ...(s.runtimeClassName ? { runtimeClassName: s.runtimeClassName } : {}),
      nodeSelector: s.nodeSelector ?? {},
      tolerations: s.tolerations ?? [],
      ...(s.cpu ? { cpu: s.cpu } : {}),
      workspaceSizeMb: s.workspaceSizeMb ?? 256,
      tmpSizeMb: s.tmpSizeMb ?? 64,
      runAsUser: s.runAsUser ?? 65534,
      startTimeoutMs: s.startTimeoutMs ?? 120_000,
      owner: ctx.workerId,
      pool: { minIdle: s.poolMinIdle ?? 2, maxSize: s.poolMaxSize ?? 4 },
    });
    // Refuses to start without the default-deny NetworkPolicy, naming what to apply.
    try {
      await provider.checkNetworkPolicy();
    } catch (err) {
      await provider.close().catch(() => undefined);
      throw err;
    }
    return provider;
  },
});
