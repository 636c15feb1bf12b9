/**
 * core/v1 Pod as the API server treats it: type checks, the validation a
 * provider can trip over (names, labels, containers, volumes, restart
 * policy, deadlines, limits), the defaults the server fills in, the fields
 * a pod update may change, and `kubectl get pods` columns.
 */
import type { KubeObject } from "./store.js";
import { badRequest, conflict, failure, invalid, type Status, type StatusCause } from "./status.js";
import { shapeProblem, type ShapeTable } from "./decode.js";
import { causes, dns1123LabelProblem, dns1123SubdomainProblem, validateObjectMeta } from "./validation.js";
import { parseQuantity } from "./quantity.js";
import { AGE_COLUMN, NAME_COLUMN, humanAge, type ResourceType } from "./resource-type.js";

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath?: string }; [k: string]: unknown };
}

export interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  workingDir?: string;
  env?: EnvVar[];
  resources?: { limits?: Record<string, string | number>; requests?: Record<string, string | number> };
  volumeMounts?: Array<{ name: string; mountPath: string }>;
  imagePullPolicy?: string;
  [k: string]: unknown;
}

export interface ContainerState {
  waiting?: { reason: string; message?: string };
  running?: { startedAt: string };
  terminated?: { exitCode: number; reason: string; message?: string; startedAt?: string; finishedAt: string; containerID?: string };
}

export interface ContainerStatus {
  name: string;
  image: string;
  imageID: string;
  containerID?: string;
  ready: boolean;
  started: boolean;
  restartCount: number;
  state: ContainerState;
  lastState: ContainerState;
}

export interface PodCondition {
  type: string;
  status: "True" | "False";
  lastProbeTime: null;
  lastTransitionTime: string;
  reason?: string;
}

export interface PodStatus {
  phase: "Pending" | "Running" | "Succeeded" | "Failed";
  reason?: string;
  message?: string;
  conditions?: PodCondition[];
  hostIP?: string;
  podIP?: string;
  podIPs?: Array<{ ip: string }>;
  startTime?: string;
  containerStatuses?: ContainerStatus[];
  qosClass?: string;
}

export interface Pod extends KubeObject {
  spec: {
    containers: Container[];
    restartPolicy: "Always" | "OnFailure" | "Never";
    activeDeadlineSeconds?: number;
    terminationGracePeriodSeconds: number;
    nodeName?: string;
    volumes?: Array<{ name: string; [k: string]: unknown }>;
    [k: string]: unknown;
  };
  status: PodStatus;
}

const SHAPES: ShapeTable = {
  metadata: "object",
  "metadata.name": "string",
  "metadata.generateName": "string",
  "metadata.namespace": "string",
  "metadata.labels": "stringMap",
  "metadata.annotations": "stringMap",
  spec: "object",
  "spec.containers": "array",
  "spec.containers[]": "object",
  "spec.containers[].name": "string",
  "spec.containers[].image": "string",
  "spec.containers[].command": "array",
  "spec.containers[].command[]": "string",
  "spec.containers[].args": "array",
  "spec.containers[].args[]": "string",
  "spec.containers[].workingDir": "string",
  "spec.containers[].env": "array",
  "spec.containers[].env[]": "object",
  "spec.containers[].env[].name": "string",
  "spec.containers[].env[].value": "string",
  "spec.containers[].resources": "object",
  "spec.containers[].resources.limits": "quantityMap",
  "spec.containers[].resources.requests": "quantityMap",
  "spec.containers[].volumeMounts": "array",
  "spec.containers[].volumeMounts[]": "object",
  "spec.containers[].volumeMounts[].name": "string",
  "spec.containers[].volumeMounts[].mountPath": "string",
  "spec.volumes": "array",
  "spec.volumes[]": "object",
  "spec.volumes[].name": "string",
  "spec.restartPolicy": "string",
  "spec.activeDeadlineSeconds": "integer",
  "spec.terminationGracePeriodSeconds": "integer",
  "spec.nodeName": "string",
  "spec.nodeSelector": "stringMap",
  "spec.tolerations": "array",
  "spec.automountServiceAccountToken": "boolean",
  "spec.runtimeClassName": "string",
};

const RESTART_POLICIES = ["Always", "OnFailure", "Never"] as const;
const ENV_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;
const MAX_INT32 = 2147483647;

function validateContainers(spec: Record<string, unknown>): StatusCause[] {
  const out: StatusCause[] = [];
  const containers = (spec.containers ?? []) as Container[];
  if (containers.length === 0) out.push(causes.required("spec.containers"));
  const volumes = new Set<string>();
  ((spec.volumes ?? []) as Array<{ name?: string }>).forEach((v, i) => {
    const f = `spec.volumes[${i}].name`;
    if (!v.name) out.push(causes.required(f));
    else if (volumes.has(v.name)) out.push(causes.duplicate(f, v.name));
    else {
      const p = dns1123LabelProblem(v.name);
      if (p) out.push(causes.invalid(f, v.name, p));
      volumes.add(v.name);
    }
  });
  const names = new Set<string>();
  containers.forEach((c, i) => {
    const at = `spec.containers[${i}]`;
    if (!c.name) out.push(causes.required(`${at}.name`));
    else if (names.has(c.name)) out.push(causes.duplicate(`${at}.name`, c.name));
    else {
      const p = dns1123LabelProblem(c.name);
      if (p) out.push(causes.invalid(`${at}.name`, c.name, p));
      names.add(c.name);
    }
    if (!c.image || c.image.trim() === "") out.push(causes.required(`${at}.image`));
    (c.env ?? []).forEach((e, j) => {
      if (!e.name) out.push(causes.required(`${at}.env[${j}].name`));
      else if (!ENV_NAME.test(e.name)) {
        out.push(
          causes.invalid(
            `${at}.env[${j}].name`,
            e.name,
            "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
          ),
        );
      }
    });
    (c.volumeMounts ?? []).forEach((m, j) => {
      if (!m.name) out.push(causes.required(`${at}.volumeMounts[${j}].name`));
      else if (!volumes.has(m.name)) out.push(causes.notFound(`${at}.volumeMounts[${j}].name`, m.name));
      if (!m.mountPath) out.push(causes.required(`${at}.volumeMounts[${j}].mountPath`));
    });
    const limits = c.resources?.limits ?? {};
    const requests = c.resources?.requests ?? {};
    for (const [res, q] of Object.entries(requests)) {
      const lim = limits[res];
      if (lim !== undefined && (parseQuantity(q) ?? 0) > (parseQuantity(lim) ?? 0)) {
        out.push(causes.invalid(`${at}.resources.requests`, String(q), `must be less than or equal to ${res} limit of ${String(lim)}`));
      }
    }
  });
  return out;
}

function validateSpec(spec: Record<string, unknown>): StatusCause[] {
  const out = validateContainers(spec);
  const rp = spec.restartPolicy;
  if (rp !== undefined && !RESTART_POLICIES.includes(rp as (typeof RESTART_POLICIES)[number])) {
    out.push(causes.notSupported("spec.restartPolicy", rp, RESTART_POLICIES));
  }
  const ads = spec.activeDeadlineSeconds;
  if (typeof ads === "number" && (ads < 1 || ads > MAX_INT32)) {
    out.push(causes.invalid("spec.activeDeadlineSeconds", ads, `must be between 1 and ${MAX_INT32}, inclusive`));
  }
  return out;
}

/** imagePullPolicy's default: Always for `:latest` or an untagged image, else IfNotPresent. */
function pullPolicy(image: string): string {
  const last = image.split("/").at(-1) ?? image;
  if (image.includes("@")) return "IfNotPresent";
  return !last.includes(":") || last.endsWith(":latest") ? "Always" : "IfNotPresent";
}

function qosClass(containers: Container[]): string {
  let any = false;
  let guaranteed = true;
  for (const c of containers) {
    const l = c.resources?.limits ?? {};
    const r = c.resources?.requests ?? {};
    if (Object.keys(l).length + Object.keys(r).length > 0) any = true;
    for (const res of ["cpu", "memory"]) {
      if (l[res] === undefined || parseQuantity(r[res] ?? l[res]) !== parseQuantity(l[res])) guaranteed = false;
    }
  }
  if (!any) return "BestEffort";
  return guaranteed ? "Guaranteed" : "Burstable";
}

/** The server's defaults (pkg/apis/core/v1/defaults.go and the ServiceAccount admission plug-in). */
function applyDefaults(pod: Pod): void {
  const spec = pod.spec;
  spec.restartPolicy ??= "Always";
  spec.terminationGracePeriodSeconds ??= 30;
  spec.dnsPolicy ??= "ClusterFirst";
  spec.schedulerName ??= "default-scheduler";
  spec.securityContext ??= {};
  spec.enableServiceLinks ??= true;
  spec.serviceAccountName ??= "default";
  spec.serviceAccount ??= spec.serviceAccountName;
  spec.priority ??= 0;
  spec.preemptionPolicy ??= "PreemptLowerPriority";
  for (const c of spec.containers) {
    c.imagePullPolicy ??= pullPolicy(c.image);
    c.terminationMessagePath ??= "/dev/termination-log";
    c.terminationMessagePolicy ??= "File";
    c.resources ??= {};
    // Requests default to limits where only a limit is given.
    if (c.resources.limits) {
      c.resources.requests = { ...c.resources.limits, ...c.resources.requests };
    }
  }
  pod.status = { phase: "Pending", qosClass: qosClass(spec.containers) };
}

function prepareCreate(body: Record<string, unknown>): Pod | Status {
  const shape = shapeProblem("Pod", "v1", body, SHAPES);
  if (shape) return badRequest(shape);
  const meta = body.metadata as Record<string, unknown>;
  const spec = (body.spec ?? {}) as Record<string, unknown>;
  const problems = [
    ...validateObjectMeta(meta, { nameProblem: dns1123SubdomainProblem }),
    ...validateSpec(spec),
  ];
  const name = String(meta.name ?? meta.generateName ?? "");
  if (problems.length > 0) return invalid("Pod", "", name, problems);
  const pod = { ...body, apiVersion: "v1", kind: "Pod", spec: structuredClone(spec) } as Pod;
  applyDefaults(pod);
  return pod;
}

const UPDATE_FORBIDDEN =
  "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/** Pod specs are immutable but for images, the deadline (set or shortened) and added tolerations; status is the kubelet's. */
function prepareUpdate(old: KubeObject, next: Record<string, unknown>): Pod | Status {
  const before = old as Pod;
  const shape = shapeProblem("Pod", "v1", next, SHAPES);
  if (shape) return badRequest(shape);
  const meta = next.metadata as Record<string, unknown>;
  const metaProblems = validateObjectMeta(meta, { nameProblem: dns1123SubdomainProblem });
  if (metaProblems.length > 0) return invalid("Pod", "", before.metadata.name, metaProblems);
  const spec = structuredClone((next.spec ?? {}) as Pod["spec"]);
  const ads = spec.activeDeadlineSeconds;
  const oldAds = before.spec.activeDeadlineSeconds;
  if (oldAds !== undefined && ads === undefined) {
    return invalid("Pod", "", before.metadata.name, [
      causes.invalid("spec.activeDeadlineSeconds", "null", "must not update from a positive integer to nil value"),
    ]);
  }
  if (ads !== undefined && ((oldAds !== undefined && ads > oldAds) || ads < 1)) {
    return invalid("Pod", "", before.metadata.name, [
      causes.invalid("spec.activeDeadlineSeconds", ads, "must be less than or equal to previous value"),
    ]);
  }
  // Compare with the mutable fields masked out.
  const mask = (s: Pod["spec"]) => ({
    ...s,
    activeDeadlineSeconds: undefined,
    tolerations: undefined,
    containers: (s.containers ?? []).map((c) => ({ ...c, image: undefined })),
  });
  if (JSON.stringify(mask(spec)) !== JSON.stringify(mask(before.spec))) {
    return invalid("Pod", "", before.metadata.name, [causes.forbidden("spec", UPDATE_FORBIDDEN)]);
  }
  return { ...next, apiVersion: "v1", kind: "Pod", spec, status: before.status } as Pod;
}

/** STATUS column: the reason a person would want to see (kubectl's printPod). */
export function podDisplayStatus(pod: Pod): string {
  let reason: string = pod.status.reason ?? pod.status.phase;
  for (const cs of pod.status.containerStatuses ?? []) {
    if (cs.state.waiting?.reason) reason = cs.state.waiting.reason;
    else if (cs.state.terminated?.reason) reason = cs.state.terminated.reason;
  }
  if (pod.metadata.deletionTimestamp) reason = "Terminating";
  return reason;
}

export const podType: ResourceType = {
  gr: { group: "", resource: "pods" },
  version: "v1",
  kind: "Pod",
  listKind: "PodList",
  singular: "pod",
  shortNames: ["po"],
  namespaced: true,
  verbs: ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
  prepareCreate,
  prepareUpdate,
  selectableFields: {
    "spec.nodeName": (o) => (o as Pod).spec.nodeName ?? "",
    "spec.restartPolicy": (o) => (o as Pod).spec.restartPolicy,
    "spec.schedulerName": (o) => String((o as Pod).spec.schedulerName ?? ""),
    "spec.serviceAccountName": (o) => String((o as Pod).spec.serviceAccountName ?? ""),
    "status.phase": (o) => (o as Pod).status.phase,
    "status.podIP": (o) => (o as Pod).status.podIP ?? "",
    "status.nominatedNodeName": () => "",
  },
  columns: [
    NAME_COLUMN,
    { name: "Ready", type: "string", description: "The aggregate readiness state of this pod for accepting traffic.", priority: 0 },
    { name: "Status", type: "string", description: "The aggregate status of the containers in this pod.", priority: 0 },
    { name: "Restarts", type: "string", description: "The number of times the containers in this pod have been restarted.", priority: 0 },
    AGE_COLUMN,
    { name: "IP", type: "string", description: "IP address allocated to the pod.", priority: 1 },
    { name: "Node", type: "string", description: "Name of the node the pod is assigned to.", priority: 1 },
  ],
  cells(o, now) {
    const pod = o as Pod;
    const statuses = pod.status.containerStatuses ?? [];
    const ready = statuses.filter((s) => s.ready).length;
    const restarts = statuses.reduce((n, s) => n + s.restartCount, 0);
    return [
      pod.metadata.name,
      `${ready}/${pod.spec.containers.length}`,
      podDisplayStatus(pod),
      String(restarts),
      humanAge(pod.metadata.creationTimestamp, now),
      pod.status.podIP ?? "<none>",
      pod.spec.nodeName ?? "<none>",
    ];
  },
};

/** The answer to a pod delete whose preconditions do not hold. */
export function preconditionFailed(pod: Pod, uid: string): Status {
  return conflict(podType.gr, pod.metadata.name, `Precondition failed: UID in precondition: ${uid}, UID in object meta: ${pod.metadata.uid}`);
}

export function isPod(o: KubeObject): o is Pod {
  return o.kind === "Pod";
}

/** 400 for exec on a pod that cannot run one now (the API's wording where it has one). */
export function notRunning(pod: Pod): Status {
  if (!pod.spec.nodeName) return badRequest(`pod ${pod.metadata.name} does not have a host assigned`);
  return failure(400, "BadRequest", `container not running in pod ${pod.metadata.name} (phase ${pod.status.phase})`);
}
