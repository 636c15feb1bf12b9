/**
 * Server-side printing: a meta.k8s.io Table when the client asks for one in
 * its Accept header (kubectl get does), with one row per object and the
 * object's metadata alongside (includeObject=Metadata, the default).
 */
import type { KubeObject } from "./store.js";
import { apiVersionOf, type ResourceType } from "./resource-type.js";

export type IncludeObject = "None" | "Metadata" | "Object";

function rowObject(t: ResourceType, o: KubeObject, include: IncludeObject, version: string): unknown {
  if (include === "None") return undefined;
  if (include === "Object") return { ...o, kind: t.kind, apiVersion: apiVersionOf(t) };
  return { kind: "PartialObjectMetadata", apiVersion: `meta.k8s.io/${version}`, metadata: o.metadata };
}

export function toTable(
  t: ResourceType,
  objects: readonly KubeObject[],
  opts: { version: "v1" | "v1beta1"; include: IncludeObject; resourceVersion: string; continueToken?: string; noHeaders?: boolean },
): Record<string, unknown> {
  const now = new Date();
  return {
    kind: "Table",
    apiVersion: `meta.k8s.io/${opts.version}`,
    metadata: { resourceVersion: opts.resourceVersion, ...(opts.continueToken ? { continue: opts.continueToken } : {}) },
    ...(opts.noHeaders
      ? {}
      : { columnDefinitions: t.columns.map((c) => ({ name: c.name, type: c.type, format: c.format ?? "", description: c.description, priority: c.priority })) }),
    rows: objects.map((o) => ({ cells: t.cells(o, now), object: rowObject(t, o, opts.include, opts.version) })),
  };
}
