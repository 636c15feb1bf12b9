/**
 * The stand-in's node: it runs every pod the API stores as one real local
 * sandbox (providers/local), and writes back what a kubelet reports.
 *
 * - ADDED: scheduled at once (nodeName, startTime; containers
 *   ContainerCreating), the image mapped to a local image (unmapped:
 *   ErrImagePull), a sandbox acquired with the pod's memory limit and a pids
 *   default, then Running.
 * - exec: one command at a time per pod, in the sandbox, with the
 *   container's environment and workingDir.
 * - a memory kill ends the container as a cgroup v2 group OOM kill does:
 *   OOMKilled / exit 137 (terminated under restartPolicy Never, else
 *   lastState and a restart; the sandbox, like an emptyDir, survives).
 * - activeDeadlineSeconds: Failed / DeadlineExceeded, sandbox released.
 * - graceful delete (deletionTimestamp): the sandbox is released, then the
 *   pod removed; an immediate delete releases it in the background.
 *
 * Every reaction to a store event runs on a later tick: the store calls its
 * listeners while it emits, and a nested write would reach watchers before
 * the event that caused it.
 */
import { constants as osConstants } from "node:os";
import type { ExecResult, Sandbox, SandboxProvider } from "../../providers/provider.js";
import type { ObjectStore, StoreEvent } from "./store.js";
import { timestamp } from "./store.js";
import type { Container, ContainerStatus, Pod, PodCondition } from "./pods.js";
import { isPod } from "./pods.js";
import { memoryMiB } from "./quantity.js";

export interface KubeletOptions {
  provider: SandboxProvider;
  nodeName: string;
  nodeIP: string;
  /** Container image -> local provider image name. */
  images: Readonly<Record<string, string>>;
  /** Local image for images not in `images`; null: such pods fail to pull (ErrImagePull). */
  defaultImage: string | null;
  /** Memory of a pod whose containers do not all set limits.memory, MiB. */
  defaultMemoryMb: number;
  /** pids limit of every pod (a kubelet's --pod-max-pids). */
  podPidsLimit: number;
  /** Per stream and exec: the local sandbox buffers output, so a cap keeps a flood from exhausting memory. */
  maxOutputBytes: number;
}

export type ExecOutcome =
  | { type: "exited"; exitCode: number; stdout: Buffer; stderr: Buffer }
  /** The pod vanished (fault injection): the connection drops without a status. */
  | { type: "lost" }
  | { type: "error"; message: string };

export interface ExecCall {
  container: Container;
  argv: string[];
  stdin: Buffer | undefined;
  signal: AbortSignal;
  /** Output as the command writes it (a kubelet streams it; the outcome then carries none). */
  onOutput?: (stream: "stdout" | "stderr", chunk: Buffer) => void;
}

type StopReason = "deleted" | "deadline" | "vanished" | "oom";

interface PodRuntime {
  namespace: string;
  name: string;
  uid: string;
  sandbox: Sandbox | null;
  stopping: StopReason | null;
  startDelayMs: number;
  /** Resolves when the previous exec of this pod is done (execs run one at a time). */
  execTail: Promise<void>;
  running: Set<AbortController>;
  deadline: NodeJS.Timeout | null;
  wake: (() => void) | null;
}

/** An exec's stand-in timeout: Kubernetes has none; the client ends an exec by closing it. */
const EXEC_TIMEOUT_MS = 24 * 3600 * 1000;
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const SIGNALS = osConstants.signals as Record<string, number>;

const keyOf = (namespace: string, name: string) => `${namespace}/${name}`;

function condition(type: string, status: boolean, reason?: string): PodCondition {
  return { type, status: status ? "True" : "False", lastProbeTime: null, lastTransitionTime: timestamp(), ...(reason ? { reason } : {}) };
}

/** An exec's exit code as the container runtime reports it: 128 + signal for a killed process. */
export function exitCodeOf(r: ExecResult): number {
  if (r.limitHit === null || r.limitHit === "pids") {
    if (r.exitCode !== null) return r.exitCode;
    if (r.signal !== null) return 128 + (SIGNALS[r.signal] ?? 9);
  }
  return 137;
}

export class Kubelet {
  private readonly pods = new Map<string, PodRuntime>();
  private readonly pending = new Set<Promise<unknown>>();
  private readonly startDelays = new Map<string, number>();
  private readonly unsubscribe: () => void;
  private nextIp = 2;

  constructor(
    private readonly store: ObjectStore,
    private readonly opts: KubeletOptions,
  ) {
    this.unsubscribe = store.subscribe((e) => {
      if (e.resource === "pods") void Promise.resolve().then(() => this.onEvent(e));
    });
  }

  /** The pod's next start waits this long first (fault: slow pod creation). Call before creating it. */
  delayStart(namespace: string, name: string, ms: number): void {
    this.startDelays.set(keyOf(namespace, name), ms);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p)).catch(() => undefined);
    return p;
  }

  private onEvent(e: StoreEvent): void {
    if (!isPod(e.object)) return;
    const pod = e.object;
    const key = keyOf(pod.metadata.namespace ?? "", pod.metadata.name);
    const rt = this.pods.get(key);
    if (e.type === "ADDED" && !rt) {
      const fresh: PodRuntime = {
        namespace: pod.metadata.namespace ?? "",
        name: pod.metadata.name,
        uid: pod.metadata.uid,
        sandbox: null,
        stopping: null,
        startDelayMs: this.startDelays.get(key) ?? 0,
        execTail: Promise.resolve(),
        running: new Set(),
        deadline: null,
        wake: null,
      };
      this.startDelays.delete(key);
      this.pods.set(key, fresh);
      void this.track(this.start(fresh));
    } else if (e.type === "MODIFIED" && pod.metadata.deletionTimestamp && !e.previous?.metadata.deletionTimestamp) {
      void this.track(this.terminate(key, rt));
    } else if (e.type === "DELETED" && rt && rt.uid === pod.metadata.uid) {
      this.pods.delete(key);
      void this.track(this.stop(rt, rt.stopping ?? "deleted"));
    }
  }

  private update(rt: PodRuntime, change: (pod: Pod) => void): Pod | undefined {
    const out = this.store.update("pods", rt.namespace, rt.name, (o) => {
      if (o.metadata.uid !== rt.uid) return false;
      change(o as Pod);
    });
    return out as Pod | undefined;
  }

  private setContainers(rt: PodRuntime, state: (c: Container) => ContainerStatus["state"], extra: Partial<ContainerStatus> = {}): void {
    this.update(rt, (pod) => {
      const old = new Map((pod.status.containerStatuses ?? []).map((s) => [s.name, s]));
      pod.status.containerStatuses = pod.spec.containers.map((c) => ({
        name: c.name,
        image: c.image,
        imageID: "",
        restartCount: old.get(c.name)?.restartCount ?? 0,
        lastState: old.get(c.name)?.lastState ?? {},
        ready: false,
        started: false,
        ...extra,
        state: state(c),
      }));
    });
  }

  private async start(rt: PodRuntime): Promise<void> {
    const scheduled = this.update(rt, (pod) => {
      pod.spec.nodeName = this.opts.nodeName;
      pod.status.startTime = timestamp();
      pod.status.hostIP = this.opts.nodeIP;
      pod.status.conditions = [
        condition("Initialized", true),
        condition("Ready", false, "ContainersNotReady"),
        condition("ContainersReady", false, "ContainersNotReady"),
        condition("PodScheduled", true),
      ];
    });
    if (!scheduled) return;
    const deadline = scheduled.spec.activeDeadlineSeconds;
    if (deadline !== undefined) {
      rt.deadline = setTimeout(() => void this.track(this.expire(rt)), deadline * 1000);
    }
    const unmapped = scheduled.spec.containers.find((c) => this.localImage(c.image) === null);
    if (unmapped) {
      this.setContainers(rt, (c) =>
        this.localImage(c.image) === null
          ? { waiting: { reason: "ErrImagePull", message: `rpc error: code = NotFound desc = failed to pull and unpack image "${c.image}": not known to the stand-in (map it with --image)` } }
          : { waiting: { reason: "PodInitializing" } },
      );
      return;
    }
    const badEnv = scheduled.spec.containers.flatMap((c) => (c.env ?? []).filter((e) => e.valueFrom && !e.valueFrom.fieldRef));
    if (badEnv.length > 0) {
      this.setContainers(rt, () => ({
        waiting: { reason: "CreateContainerConfigError", message: `the stand-in serves no Secrets or ConfigMaps (env ${badEnv[0]!.name})` },
      }));
      return;
    }
    this.setContainers(rt, () => ({ waiting: { reason: "ContainerCreating" } }));
    if (rt.startDelayMs > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, rt.startDelayMs);
        rt.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      rt.wake = null;
    }
    if (rt.stopping) return;
    let sandbox: Sandbox;
    try {
      // A variable, not a literal: SandboxSpec grows fields (annotations, maxLifetimeMs) this must also satisfy.
      const spec = {
        image: this.localImage(scheduled.spec.containers[0]!.image)!,
        limits: { memoryMb: this.memoryMb(scheduled), pids: this.opts.podPidsLimit },
        network: "none" as const,
        labels: { "sandqueue.standin/pod": `${rt.namespace}.${rt.name}` },
        annotations: {},
        maxLifetimeMs: (deadline ?? 24 * 3600) * 1000,
      };
      sandbox = await this.opts.provider.acquire(spec, {});
    } catch (err) {
      this.setContainers(rt, () => ({ waiting: { reason: "CreateContainerError", message: (err as Error).message } }));
      return;
    }
    if (rt.stopping) {
      await sandbox.release();
      return;
    }
    rt.sandbox = sandbox;
    const now = timestamp();
    this.setContainers(rt, () => ({ running: { startedAt: now } }), { ready: true, started: true, containerID: `standin://${sandbox.id}` });
    this.update(rt, (pod) => {
      pod.status.phase = "Running";
      pod.status.podIP = this.podIp();
      pod.status.podIPs = [{ ip: pod.status.podIP }];
      pod.status.conditions = [condition("Initialized", true), condition("Ready", true), condition("ContainersReady", true), condition("PodScheduled", true)];
    });
  }

  /** Pod IPs look like a cluster's; nothing listens on them (sandboxes have loopback only). */
  private podIp(): string {
    const n = this.nextIp++;
    return `10.244.${(n >> 8) & 255}.${n & 255}`;
  }

  localImage(image: string): string | null {
    return this.opts.images[image] ?? this.opts.defaultImage;
  }

  /** The sum of the containers' memory limits when all have one (the pod cgroup's limit), else the default. */
  private memoryMb(pod: Pod): number {
    const limits = pod.spec.containers.map((c) => memoryMiB(c.resources?.limits?.memory));
    if (limits.some((l) => l === null)) return this.opts.defaultMemoryMb;
    return (limits as number[]).reduce((a, b) => a + b, 0);
  }

  /** Kills whatever runs and releases the sandbox; the pod object is the caller's business. */
  private async stop(rt: PodRuntime, why: StopReason): Promise<void> {
    rt.stopping ??= why;
    if (rt.deadline) clearTimeout(rt.deadline);
    rt.wake?.();
    for (const ac of rt.running) ac.abort(why);
    const box = rt.sandbox;
    rt.sandbox = null;
    await box?.release();
  }

  /** Graceful deletion: the kubelet stops the pod, then removes it (the DELETED event). */
  private async terminate(key: string, rt: PodRuntime | undefined): Promise<void> {
    if (rt) {
      await this.stop(rt, "deleted").catch(() => undefined);
      this.update(rt, (pod) => {
        const now = timestamp();
        for (const cs of pod.status.containerStatuses ?? []) {
          if (cs.state.running) cs.state = { terminated: { exitCode: 137, reason: "Error", startedAt: cs.state.running.startedAt, finishedAt: now } };
          cs.ready = false;
        }
      });
    }
    const [namespace, name] = key.split("/") as [string, string];
    this.store.remove("pods", namespace, name);
  }

  private async expire(rt: PodRuntime): Promise<void> {
    if (rt.stopping) return;
    await this.stop(rt, "deadline");
    const now = timestamp();
    this.update(rt, (pod) => {
      pod.status.phase = "Failed";
      pod.status.reason = "DeadlineExceeded";
      pod.status.message = "Pod was active on the node longer than the specified deadline";
      pod.status.conditions = (pod.status.conditions ?? []).map((c) =>
        c.type === "Ready" || c.type === "ContainersReady" ? condition(c.type, false, "PodFailed") : c,
      );
      for (const cs of pod.status.containerStatuses ?? []) {
        cs.state = { terminated: { exitCode: 137, reason: "Error", startedAt: cs.state.running?.startedAt, finishedAt: now } };
        cs.ready = false;
      }
    });
  }

  /** A memory kill in an exec kills the container (cgroup v2 group OOM kill). */
  private async oomKilled(rt: PodRuntime): Promise<void> {
    const now = timestamp();
    const pod = this.store.get("pods", rt.namespace, rt.name) as Pod | undefined;
    if (!pod || pod.metadata.uid !== rt.uid) return;
    const terminated = (startedAt?: string) => ({ terminated: { exitCode: 137, reason: "OOMKilled", startedAt, finishedAt: now } });
    if (pod.spec.restartPolicy === "Never") {
      await this.stop(rt, "oom");
      this.update(rt, (p) => {
        p.status.phase = "Failed";
        p.status.conditions = (p.status.conditions ?? []).map((c) =>
          c.type === "Ready" || c.type === "ContainersReady" ? condition(c.type, false, "PodFailed") : c,
        );
        for (const cs of p.status.containerStatuses ?? []) {
          cs.state = terminated(cs.state.running?.startedAt);
          cs.ready = false;
        }
      });
      return;
    }
    this.update(rt, (p) => {
      for (const cs of p.status.containerStatuses ?? []) {
        cs.lastState = terminated(cs.state.running?.startedAt);
        cs.restartCount += 1;
        cs.state = { running: { startedAt: now } };
      }
    });
  }

  /** The fault "pod vanishes mid-exec": removed at once, its execs' connections dropped. False when there is no such pod. */
  vanish(namespace: string, name: string): boolean {
    const rt = this.pods.get(keyOf(namespace, name));
    if (rt) rt.stopping ??= "vanished";
    return this.store.remove("pods", namespace, name) !== undefined;
  }

  /** Pods whose sandbox is up, with the local sandbox's id. */
  sandboxes(): Array<{ namespace: string; name: string; sandbox: string }> {
    return [...this.pods.values()].flatMap((rt) => (rt.sandbox ? [{ namespace: rt.namespace, name: rt.name, sandbox: rt.sandbox.id }] : []));
  }

  /** Whether the pod's sandbox is up (exec possible). */
  isRunning(namespace: string, name: string): boolean {
    const rt = this.pods.get(keyOf(namespace, name));
    return !!rt && rt.sandbox !== null && rt.stopping === null;
  }

  private env(pod: Pod, c: Container): Record<string, string> {
    const env: Record<string, string> = { PATH, HOSTNAME: pod.metadata.name, HOME: "/" };
    const field: Record<string, string | undefined> = {
      "metadata.name": pod.metadata.name,
      "metadata.namespace": pod.metadata.namespace,
      "metadata.uid": pod.metadata.uid,
      "spec.nodeName": pod.spec.nodeName,
      "spec.serviceAccountName": String(pod.spec.serviceAccountName ?? ""),
      "status.hostIP": pod.status.hostIP,
      "status.podIP": pod.status.podIP,
    };
    for (const e of c.env ?? []) {
      const path = e.valueFrom?.fieldRef?.fieldPath;
      env[e.name] = path !== undefined ? (field[path] ?? "") : (e.value ?? "");
    }
    return env;
  }

  async exec(namespace: string, name: string, call: ExecCall): Promise<ExecOutcome> {
    const rt = this.pods.get(keyOf(namespace, name));
    if (!rt) return { type: "error", message: `pod ${name} is gone` };
    const previous = rt.execTail;
    let done!: () => void;
    rt.execTail = new Promise<void>((r) => (done = r));
    const ac = new AbortController();
    const onAbort = () => ac.abort(call.signal.reason);
    call.signal.addEventListener("abort", onAbort, { once: true });
    try {
      await previous;
      const killed = (): ExecOutcome =>
        rt.stopping === "vanished" ? { type: "lost" } : { type: "exited", exitCode: 137, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
      if (call.signal.aborted || rt.stopping || !rt.sandbox) return killed();
      const pod = this.store.get("pods", namespace, name) as Pod | undefined;
      if (!pod) return killed();
      rt.running.add(ac);
      const result = await rt.sandbox.exec({
        argv: call.argv,
        env: this.env(pod, call.container),
        cwd: call.container.workingDir ?? "/",
        ...(call.stdin ? { stdin: call.stdin } : {}),
        timeoutMs: EXEC_TIMEOUT_MS,
        maxOutputBytes: this.opts.maxOutputBytes,
        signal: ac.signal,
        ...(call.onOutput ? { onOutput: call.onOutput } : {}),
      });
      if (rt.stopping === "vanished") return { type: "lost" };
      if (result.limitHit === "memory") await this.oomKilled(rt);
      return { type: "exited", exitCode: exitCodeOf(result), stdout: result.stdout, stderr: result.stderr };
    } catch (err) {
      if (rt.stopping === "vanished") return { type: "lost" };
      if (rt.stopping) return { type: "exited", exitCode: 137, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
      return { type: "error", message: (err as Error).message };
    } finally {
      call.signal.removeEventListener("abort", onAbort);
      rt.running.delete(ac);
      done();
    }
  }

  /** Resolves once every start, stop and release begun so far has finished. */
  async settled(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }

  async close(): Promise<void> {
    this.unsubscribe();
    await Promise.allSettled([...this.pods.values()].map((rt) => this.stop(rt, "deleted")));
    this.pods.clear();
    await this.settled();
  }
}
