/** core/v1 Namespace: cluster-scoped; the stand-in starts with the four a cluster has plus any it is given. */
import { badRequest, invalid, type Status } from "./status.js";
import { shapeProblem, type ShapeTable } from "./decode.js";
import { dns1123LabelProblem, validateObjectMeta } from "./validation.js";
import { AGE_COLUMN, NAME_COLUMN, humanAge, type ResourceType } from "./resource-type.js";
import type { KubeObject } from "./store.js";

export const BUILTIN_NAMESPACES = ["default", "kube-system", "kube-public", "kube-node-lease"];

const SHAPES: ShapeTable = {
  metadata: "object",
  "metadata.name": "string",
  "metadata.generateName": "string",
  "metadata.labels": "stringMap",
  "metadata.annotations": "stringMap",
};

function check(body: Record<string, unknown>, old: KubeObject | undefined): KubeObject | Status {
  const shape = shapeProblem("Namespace", "v1", body, SHAPES);
  if (shape) return badRequest(shape);
  const meta = body.metadata as Record<string, unknown>;
  const problems = validateObjectMeta(meta, { nameProblem: dns1123LabelProblem });
  if (problems.length > 0) return invalid("Namespace", "", String(meta.name ?? meta.generateName ?? ""), problems);
  // The API labels every namespace with its own name (NamespaceDefaultLabelName).
  meta.labels = { ...(meta.labels as Record<string, string> | undefined), "kubernetes.io/metadata.name": String(meta.name) };
  return {
    ...body,
    apiVersion: "v1",
    kind: "Namespace",
    spec: { finalizers: ["kubernetes"] },
    status: old?.status ?? { phase: "Active" },
  } as unknown as KubeObject;
}

export function namespaceObject(name: string): Record<string, unknown> {
  return { apiVersion: "v1", kind: "Namespace", metadata: { name } };
}

export const namespaceType: ResourceType = {
  gr: { group: "", resource: "namespaces" },
  version: "v1",
  kind: "Namespace",
  listKind: "NamespaceList",
  singular: "namespace",
  shortNames: ["ns"],
  namespaced: false,
  verbs: ["create", "delete", "get", "list", "patch", "update", "watch"],
  prepareCreate: (body) => check(body, undefined),
  prepareUpdate: (old, next) => check(next, old),
  selectableFields: { "status.phase": (o) => String((o.status as { phase?: string } | undefined)?.phase ?? "") },
  columns: [
    NAME_COLUMN,
    { name: "Status", type: "string", description: "The status of the namespace", priority: 0 },
    AGE_COLUMN,
  ],
  cells: (o, now) => [o.metadata.name, String((o.status as { phase?: string } | undefined)?.phase ?? ""), humanAge(o.metadata.creationTimestamp, now)],
};
