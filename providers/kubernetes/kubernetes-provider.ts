/**
 * KubernetesProvider: one Pod per sandbox in one namespace, through
 * @kubernetes/client-node (API calls, and its `Exec` for the WebSocket exec
 * protocol). See docs/PROVIDERS.md.
 */
import { randomUUID } from "node:crypto";
import os from "node:os";
import {
  CoreV1Api,
  KubeConfig,
  NetworkingV1Api,
  PatchStrategy,
  setHeaderOptions,
  type V1NetworkPolicy,
  type V1Pod,
} from "@kubernetes/client-node";
import { throwIfAcquireAborted } from "../abort.js";
import { ConfigError, ErrorCodes, ProviderError } from "../../errors/index.js";
import { DEFAULT_ARCHIVE_LIMITS, type ArchiveLimits } from "../archive/index.js";
import { WarmPool, type WarmPoolOptions } from "../warm-pool.js";
import {
  LABEL_JOB,
  LABEL_MANAGED_BY,
  LABEL_WORKER,
  MANAGED_BY,
  labelSafe,
  ownershipLabels,
  type OwnerLiveness,
  type ProviderCapabilities,
  type Sandbox,
  type SandboxProvider,
  type SandboxSpec,
} from "../provider.js";
import { kubernetesDefinition, type Toleration } from "./definition.js";
import { statusOf, translateKubeError } from "./kube-errors.js";
import { KubeSandbox } from "./kube-sandbox.js";
import { ANNOTATION_HOST, ANNOTATION_JOB_LABELS, ANNOTATION_PID, LABEL_POOLED, sandboxPod, type PodSettings } from "./pod-spec.js";
import { waitRunning, containerStatus } from "./pod-lifecycle.js";
import { closeExecConnections, openExec, TOOLS_PATH, V5 } from "./pod-exec.js";
import { reuseConnections } from "./connections.js";

export interface KubernetesProviderOptions {
  /** A kubeconfig file; else $KUBECONFIG, ~/.kube/config, then the in-cluster service account. */
  kubeconfig?: string;
  context?: string;
  /** A ready KubeConfig (tests); wins over `kubeconfig`. */
  kubeConfig?: KubeConfig;
  namespace: string;
  /** Job image name -> container image. */
  images?: Record<string, string>;
  runtimeClassName?: string;
  nodeSelector?: Record<string, string>;
  tolerations?: Toleration[];
  cpu?: string;
  workspaceSizeMb?: number;
  tmpSizeMb?: number;
  runAsUser?: number;
  startTimeoutMs?: number;
  /** Worker id: every pod carries it (label-safe) as `sandqueue.io/worker`. */
  owner: string;
  /** Extra labels on every pod (pooled ones included). */
  labels?: Record<string, string>;
  /** Warm pool per (image, memory); `{minIdle: 0}` disables it. */
  pool?: WarmPoolOptions;
  archiveLimits?: ArchiveLimits;
}

/** Deadline of a pod waiting in the pool; cut to the job's lifetime when a job takes it. */
const POOLED_DEADLINE_S = 3600;
/** Exit code of the image check: tar is there, but not tar and head where carried puts look (TOOLS_PATH). */
const NO_CARRY = 5;

export interface PodRef {
  id: string;
  name: string;
  image: string;
  /** When the kubelet started the pod: activeDeadlineSeconds counts from here. */
  startedAt: number;
  /** The container's restarts when handed out (a memory kill restarts it). */
  restarts: number;
  /** Archives put into /workspace can ride along with the next exec (carried-put.ts): the image has tar and head in TOOLS_PATH. */
  carriesPuts: boolean;
}

interface PodTemplate {
  image: string;
  memoryMb: number;
}

export class KubernetesProvider implements SandboxProvider {
  readonly name = "kubernetes";
  readonly capabilities: ProviderCapabilities = kubernetesDefinition.capabilities;
  readonly kc: KubeConfig;
  readonly core: CoreV1Api;
  private readonly net: NetworkingV1Api;
  readonly namespace: string;
  readonly archiveLimits: ArchiveLimits;
  private readonly opts: KubernetesProviderOptions;
  private readonly ownerLabel: string;
  private readonly podSettings: PodSettings;
  private readonly live = new Set<KubeSandbox>();
  /** Images whose pods were found to have `tar` (checked once per image), and whether puts can be carried. */
  private readonly tarChecked = new Map<string, Promise<boolean>>();
  readonly pool: WarmPool<PodRef>;
  private closing: Promise<void> | undefined;
  /** The exec subprotocol the API server chose (learnt from the first exec). */
  protocol: string | null = null;

  constructor(opts: KubernetesProviderOptions) {
    this.opts = opts;
    this.kc = opts.kubeConfig ?? loadKubeConfig(opts.kubeconfig, opts.context);
    reuseConnections(this.kc);
    this.core = this.kc.makeApiClient(CoreV1Api);
    this.net = this.kc.makeApiClient(NetworkingV1Api);
    this.namespace = opts.namespace;
    this.archiveLimits = opts.archiveLimits ?? DEFAULT_ARCHIVE_LIMITS;
    this.ownerLabel = labelSafe(opts.owner);
    this.podSettings = {
      runAsUser: opts.runAsUser ?? 65534,
      workspaceSizeMb: opts.workspaceSizeMb ?? 256,
      tmpSizeMb: opts.tmpSizeMb ?? 64,
      nodeSelector: opts.nodeSelector ?? {},
      tolerations: opts.tolerations ?? [],
      ...(opts.cpu ? { cpu: opts.cpu } : {}),
      ...(opts.runtimeClassName ? { runtimeClassName: opts.runtimeClassName } : {}),
    };
    this.pool = new WarmPool<PodRef>(
      opts.pool ?? { minIdle: 0, maxSize: 0 },
      (t) => this.createPod(t as PodTemplate, { [LABEL_POOLED]: "true" }, {}, POOLED_DEADLINE_S),
      (p) => this.deletePod(p.name),
    );
  }

  get owner(): string {
    return this.opts.owner;
  }

  /** The API server, for messages. */
  get server(): string {
    return this.kc.getCurrentCluster()?.server ?? "(no cluster in the kubeconfig)";
  }

  /** Runs `fn`, translating whatever the API or its transport throws (the one translation point). */
  async call<T>(op: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw translateKubeError(err, { op, server: this.server });
    }
  }

  /**
   * The sandbox pods must be selected by a NetworkPolicy that denies all
   * ingress and egress (no rules), or they would have the cluster's network.
   * Refuses (CONFIG_INVALID) naming what to apply.
   */
  async checkNetworkPolicy(): Promise<void> {
    const list = await this.call("list networkpolicies", () => this.net.listNamespacedNetworkPolicy({ namespace: this.namespace }));
    const podLabels = { [LABEL_MANAGED_BY]: MANAGED_BY };
    if (list.items.some((p) => isDefaultDeny(p, podLabels))) return;
    throw new ConfigError(
      ErrorCodes.CONFIG_INVALID,
      `namespace "${this.namespace}" on ${this.server} has no default-deny NetworkPolicy for sandbox pods ` +
        `(podSelector {} or ${LABEL_MANAGED_BY}=${MANAGED_BY}, policyTypes [Ingress, Egress], no ingress or egress rules): ` +
        `sandboxes would reach the network. Apply deploy/kubernetes/sandbox-namespace.yaml ` +
        `(kubectl apply -f deploy/kubernetes/sandbox-namespace.yaml), or set SANDQUEUE_K8S_NAMESPACE to a namespace that has it`,
      { details: { namespace: this.namespace } },
    );
  }

  async check(): Promise<void> {
    await this.checkNetworkPolicy();
  }

  prewarm(spec: Pick<SandboxSpec, "image" | "limits">): void {
    const t = this.templateOf(spec);
    this.pool.register(poolKey(t), t);
  }

  private templateOf(spec: Pick<SandboxSpec, "image" | "limits">): PodTemplate {
    return { image: this.opts.images?.[spec.image] ?? spec.image, memoryMb: spec.limits.memoryMb };
  }

  async acquire(spec: SandboxSpec, opts: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    if (this.closing) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "kubernetes provider is closed", { retryable: true });
    throwIfAcquireAborted(opts.signal);
    if (spec.network !== "none") {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `network mode "${String(spec.network)}" is not supported`);
    }
    const t = this.templateOf(spec);
    const lifetimeS = Math.max(1, Math.ceil(spec.maxLifetimeMs / 1000));
    const pooled = await this.pool.take(poolKey(t), t, opts.signal);
    if (pooled && opts.signal?.aborted) await this.deletePod(pooled.name).catch(() => undefined);
    throwIfAcquireAborted(opts.signal);
    let box: KubeSandbox;
    if (pooled) {
      // The adoption patch runs beside the job, off its critical path: the
      // pod already carries the worker's labels (what reaping needs). A pod
      // gone meanwhile shows at the first exec (SANDBOX_LOST, retried); a
      // patch that fails otherwise leaves the pool's deadline and no job label.
      box = new KubeSandbox(this, pooled, this.adopt(pooled, spec, lifetimeS).then(() => undefined, () => undefined));
    } else {
      box = new KubeSandbox(this, await this.createPod(t, spec.labels, spec.annotations, lifetimeS, opts.signal));
    }
    this.live.add(box);
    return box;
  }

  /**
   * Hands a pooled pod to a job: its job label and annotations, and its
   * deadline cut to the job's lifetime (Kubernetes lets a deadline shrink,
   * never grow). False when the pod is gone.
   */
  private async adopt(pod: PodRef, spec: SandboxSpec, lifetimeS: number): Promise<boolean> {
    const ranS = Math.ceil((Date.now() - pod.startedAt) / 1000);
    const deadline = Math.min(POOLED_DEADLINE_S, ranS + lifetimeS);
    const patch = {
      metadata: {
        labels: { ...spec.labels, [LABEL_POOLED]: null },
        annotations: { [ANNOTATION_JOB_LABELS]: JSON.stringify(spec.annotations) },
      },
      spec: { activeDeadlineSeconds: deadline },
    };
    try {
      await this.core.patchNamespacedPod(
        { name: pod.name, namespace: this.namespace, body: patch },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
      );
      return true;
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw translateKubeError(err, { op: "patch pod", server: this.server });
    }
  }

  /** Creates one pod and waits for it to run; deletes it again if a later step fails. */
  private async createPod(
    t: PodTemplate,
    labels: Record<string, string>,
    jobLabels: Record<string, string>,
    deadlineSeconds: number,
    signal?: AbortSignal,
  ): Promise<PodRef> {
    // A name of our own: when a create fails half-way (a timeout, a 5xx
    // after the write) the pod may exist anyway, and the name finds it.
    const name = `sq-${randomUUID()}`;
    const body = sandboxPod(
      {
        name,
        image: t.image,
        memoryMb: t.memoryMb,
        labels: { ...this.opts.labels, ...labels, ...ownershipLabels(this.opts.owner), ...(labels[LABEL_JOB] ? { [LABEL_JOB]: labels[LABEL_JOB] } : {}) },
        annotations: { [ANNOTATION_HOST]: os.hostname(), [ANNOTATION_PID]: String(process.pid), [ANNOTATION_JOB_LABELS]: JSON.stringify(jobLabels) },
        deadlineSeconds,
      },
      this.podSettings,
    );
    try {
      const created = await this.call("create pod", () => this.core.createNamespacedPod({ namespace: this.namespace, body }));
      throwIfAcquireAborted(signal);
      const running = await this.call("read pod", () =>
        waitRunning(this.core, this.namespace, name, t.image, this.opts.startTimeoutMs ?? 120_000, signal),
      );
      const carriesPuts = await this.checkTar(name, t.image);
      throwIfAcquireAborted(signal);
      const startTime = running.status?.startTime;
      return {
        id: created.metadata?.uid ?? name,
        name,
        image: t.image,
        startedAt: startTime ? new Date(startTime).getTime() : Date.now(),
        restarts: containerStatus(running)?.restartCount ?? 0,
        carriesPuts,
      };
    } catch (err) {
      await this.deletePod(name).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Files move as tar over exec, so the image needs `tar` (and /bin/sh):
   * checked on the first pod of each image, which also learns the exec
   * subprotocol the server speaks. Resolves whether small puts can ride
   * along with the next exec (tar and head in TOOLS_PATH); else each runs alone.
   */
  private checkTar(pod: string, image: string): Promise<boolean> {
    let p = this.tarChecked.get(image);
    if (!p || this.protocol === null) {
      p = (async () => {
        const stderr: Buffer[] = [];
        const h = await this.call("exec", () =>
          openExec({
            kc: this.kc,
            namespace: this.namespace,
            pod,
            container: "sandbox",
            // Carrying puts (carried-put.ts) runs tar and head with TOOLS_PATH.
            argv: ["/bin/sh", "-c", `command -v tar >/dev/null 2>&1 || exit 3; PATH=${TOOLS_PATH}; { command -v tar && command -v head; } >/dev/null 2>&1 || exit ${NO_CARRY}`],
            stdin: null,
            onStdout: () => undefined,
            onStderr: (c) => stderr.push(c),
          }),
        );
        this.protocol = h.protocol;
        const end = await h.done;
        const code = end.kind === "status" ? (end.status.status === "Success" ? 0 : Number(end.status.details?.causes?.[0]?.message)) : null;
        if (code === 3 || code === 127 || code === 126) {
          throw new ProviderError(
            ErrorCodes.PROVIDER_FAILED,
            `image "${image}" has no ${code === 3 ? "tar" : "/bin/sh"}: the kubernetes provider moves files as tar over exec; use an image with /bin/sh and tar`,
            { retryable: false, details: { image } },
          );
        }
        if (code === NO_CARRY) return false;
        if (code !== 0) {
          throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `pod ${pod}: the first exec failed (${end.kind === "status" ? (end.status.message ?? "") : `connection closed, code ${end.code}`}) ${Buffer.concat(stderr).toString().trim()}`, {
            retryable: true,
          });
        }
        return true;
      })();
      this.tarChecked.set(image, p);
      p.catch(() => this.tarChecked.delete(image));
    }
    return p;
  }

  /** The exec subprotocol (known once any pod has been checked). */
  get speaksV5(): boolean {
    return this.protocol === V5;
  }

  /** Deletes a pod at once (grace 0); a missing one is fine. */
  async deletePod(name: string): Promise<void> {
    await this.call("delete pod", async () => {
      try {
        await this.core.deleteNamespacedPod({ name, namespace: this.namespace, gracePeriodSeconds: 0 });
      } catch (err) {
        if (statusOf(err) === 404) return;
        throw err;
      }
    });
  }

  /** Reads a pod; null when it is gone. */
  async readPod(name: string): Promise<V1Pod | null> {
    return this.call("read pod", async () => {
      try {
        return await this.core.readNamespacedPod({ name, namespace: this.namespace });
      } catch (err) {
        if (statusOf(err) === 404) return null;
        throw err;
      }
    });
  }

  /** @internal */
  forget(box: KubeSandbox): void {
    this.live.delete(box);
  }

  /**
   * Deletes sandqueue pods of the namespace whose owner is dead: its worker
   * label has no heartbeat (`owners`), or it was made on this host by a
   * process that is gone. Never touches this provider's own pods, nor a
   * live worker's.
   */
  async reap(owners?: OwnerLiveness): Promise<number> {
    const list = await this.call("list pods", () =>
      this.core.listNamespacedPod({ namespace: this.namespace, labelSelector: `${LABEL_MANAGED_BY}=${MANAGED_BY}` }),
    );
    const others = list.items.filter((p) => (p.metadata?.labels ?? {})[LABEL_WORKER] !== this.ownerLabel);
    const live = owners ? await owners.liveOwners([...new Set(others.map((p) => p.metadata?.labels?.[LABEL_WORKER] ?? ""))]) : null;
    const host = os.hostname();
    let removed = 0;
    for (const p of others) {
      const a = p.metadata?.annotations ?? {};
      const localDead = a[ANNOTATION_HOST] === host && !pidAlive(Number(a[ANNOTATION_PID]));
      const noHeartbeat = live !== null && !live.has(p.metadata?.labels?.[LABEL_WORKER] ?? "");
      if (!localDead && !noHeartbeat) continue;
      await this.deletePod(p.metadata!.name!);
      removed++;
    }
    return removed;
  }

  readySandboxes(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [key, n] of this.pool.idleByKey()) {
      const image = key.split("\u0000")[0]!;
      out[image] = (out[image] ?? 0) + n;
    }
    return out;
  }

  /** Idempotent: drains the pool and deletes every pod still handed out. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const results = await Promise.allSettled([this.pool.drain(), ...[...this.live].map((b) => b.release())]);
      closeExecConnections(this.kc);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed) throw failed.reason;
    })();
    return this.closing;
  }
}

function loadKubeConfig(file: string | undefined, context: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (file) kc.loadFromFile(file);
    else kc.loadFromDefault();
    if (context) kc.setCurrentContext(context);
  } catch (err) {
    throw new ConfigError(
      ErrorCodes.CONFIG_INVALID,
      `SANDQUEUE_K8S_KUBECONFIG${file ? `=${JSON.stringify(file)}` : " (unset: $KUBECONFIG, ~/.kube/config, in-cluster)"}: cannot load a kubeconfig: ${(err as Error).message}`,
      { cause: err },
    );
  }
  if (context && !kc.getContextObject(context)) {
    throw new ConfigError(ErrorCodes.CONFIG_INVALID, `SANDQUEUE_K8S_CONTEXT=${JSON.stringify(context)}: no such context in the kubeconfig`);
  }
  if (!kc.getCurrentCluster()) {
    throw new ConfigError(ErrorCodes.CONFIG_INVALID, "SANDQUEUE_K8S_KUBECONFIG: the kubeconfig's current context names no cluster");
  }
  return kc;
}

/** A policy that selects the sandbox pods and allows nothing in or out. */
export function isDefaultDeny(p: V1NetworkPolicy, podLabels: Record<string, string>): boolean {
  const sel = p.spec?.podSelector;
  if (!sel || (sel.matchExpressions?.length ?? 0) > 0) return false;
  const selects = Object.entries(sel.matchLabels ?? {}).every(([k, v]) => podLabels[k] === v);
  const types = p.spec?.policyTypes ?? [];
  return selects && types.includes("Ingress") && types.includes("Egress") && !(p.spec?.ingress?.length ?? 0) && !(p.spec?.egress?.length ?? 0);
}

function poolKey(t: PodTemplate): string {
  return `${t.image}\u0000${t.memoryMb}`;
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
