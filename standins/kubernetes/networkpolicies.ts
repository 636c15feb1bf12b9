/**
 * networking.k8s.io/v1 NetworkPolicy: stored, validated and defaulted as the
 * API does, never enforced (every stand-in pod has no network but loopback,
 * whatever the policies say).
 */
import { badRequest, invalid, type Status } from "./status.js";
import { shapeProblem, type ShapeTable } from "./decode.js";
import { causes, dns1123SubdomainProblem, validateObjectMeta } from "./validation.js";
import { AGE_COLUMN, NAME_COLUMN, humanAge, type ResourceType } from "./resource-type.js";
import type { KubeObject } from "./store.js";

const SHAPES: ShapeTable = {
  metadata: "object",
  "metadata.name": "string",
  "metadata.generateName": "string",
  "metadata.labels": "stringMap",
  "metadata.annotations": "stringMap",
  spec: "object",
  "spec.podSelector": "object",
  "spec.podSelector.matchLabels": "stringMap",
  "spec.podSelector.matchExpressions": "array",
  "spec.ingress": "array",
  "spec.egress": "array",
  "spec.policyTypes": "array",
  "spec.policyTypes[]": "string",
};

const POLICY_TYPES = ["Ingress", "Egress"];

function check(body: Record<string, unknown>, nameForErrors: string | undefined): KubeObject | Status {
  const shape = shapeProblem("NetworkPolicy", "networking.k8s.io/v1", body, SHAPES);
  if (shape) return badRequest(shape);
  const meta = body.metadata as Record<string, unknown>;
  const spec = structuredClone((body.spec ?? {}) as Record<string, unknown>);
  const problems = validateObjectMeta(meta, { nameProblem: dns1123SubdomainProblem });
  const types = spec.policyTypes as string[] | undefined;
  (types ?? []).forEach((t, i) => {
    if (!POLICY_TYPES.includes(t)) problems.push(causes.notSupported(`spec.policyTypes[${i}]`, t, POLICY_TYPES));
  });
  if (problems.length > 0) {
    return invalid("NetworkPolicy", "networking.k8s.io", nameForErrors ?? String(meta.name ?? meta.generateName ?? ""), problems);
  }
  // Defaults: an empty podSelector selects every pod; policyTypes from the rules present.
  spec.podSelector ??= {};
  if (!types) spec.policyTypes = Array.isArray(spec.egress) ? ["Ingress", "Egress"] : ["Ingress"];
  return { ...body, apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", spec } as unknown as KubeObject;
}

function selectorText(sel: unknown): string {
  const s = (sel ?? {}) as { matchLabels?: Record<string, string>; matchExpressions?: unknown[] };
  const parts = Object.entries(s.matchLabels ?? {}).map(([k, v]) => `${k}=${v}`);
  if ((s.matchExpressions ?? []).length > 0) parts.push("…");
  return parts.length ? parts.join(",") : "<none>";
}

export const networkPolicyType: ResourceType = {
  gr: { group: "networking.k8s.io", resource: "networkpolicies" },
  version: "v1",
  kind: "NetworkPolicy",
  listKind: "NetworkPolicyList",
  singular: "networkpolicy",
  shortNames: ["netpol"],
  namespaced: true,
  verbs: ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
  prepareCreate: (body) => check(body, undefined),
  prepareUpdate: (old, next) => check(next, old.metadata.name),
  selectableFields: {},
  columns: [
    NAME_COLUMN,
    { name: "Pod-Selector", type: "string", description: "Selects the pods to which this NetworkPolicy object applies.", priority: 0 },
    AGE_COLUMN,
  ],
  cells: (o, now) => [o.metadata.name, selectorText((o.spec as Record<string, unknown> | undefined)?.podSelector), humanAge(o.metadata.creationTimestamp, now)],
};
