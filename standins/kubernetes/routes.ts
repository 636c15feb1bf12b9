/**
 * URL -> what is asked: a discovery document, the OpenAPI document, a
 * health probe, or a resource (with namespace, name and subresource), and
 * the verb the API would authorize it as.
 */
import type { ResourceType } from "./resource-type.js";
import type { Verb } from "./faults.js";
import { apiGroup, coreVersions, groupList, resourceList, versionInfo } from "./discovery.js";

export type Route =
  | { kind: "document"; body: unknown; public: boolean }
  | { kind: "openapi" }
  | { kind: "health" }
  | { kind: "resource"; type: ResourceType; namespace?: string; name?: string; subresource?: string };

export function routeOf(pathname: string, types: readonly ResourceType[], serverAddress: string): Route | null {
  const path = pathname.replace(/\/+$/, "");
  switch (path) {
    case "/version":
      return { kind: "document", body: versionInfo(), public: true };
    case "/healthz":
    case "/livez":
    case "/readyz":
      return { kind: "health" };
    case "/api":
      return { kind: "document", body: coreVersions(serverAddress), public: false };
    case "/apis":
      return { kind: "document", body: groupList(types), public: false };
    case "/openapi/v2":
      return { kind: "openapi" };
  }
  const segs = path.split("/").slice(1).map(decodeURIComponent);
  let group: string;
  let version: string;
  let rest: string[];
  if (segs[0] === "api" && segs[1] === "v1") {
    [group, version, rest] = ["", "v1", segs.slice(2)];
  } else if (segs[0] === "apis" && segs.length >= 2) {
    if (segs.length === 2) {
      const body = apiGroup(types, segs[1]!);
      return body ? { kind: "document", body, public: false } : null;
    }
    [group, version, rest] = [segs[1]!, segs[2]!, segs.slice(3)];
  } else {
    return null;
  }
  if (rest.length === 0) {
    const body = resourceList(types, group, version);
    return body ? { kind: "document", body, public: false } : null;
  }
  const find = (resource: string) => types.find((t) => t.gr.group === group && t.version === version && t.gr.resource === resource);
  if (rest[0] === "namespaces" && rest.length >= 3) {
    const type = find(rest[2]!);
    if (!type?.namespaced || rest.length > 5) return null;
    return { kind: "resource", type, namespace: rest[1]!, name: rest[3], subresource: rest[4] };
  }
  const type = find(rest[0]!);
  if (!type || rest.length > 3) return null;
  // `/api/v1/pods`: a namespaced resource across all namespaces (list and watch only).
  if (type.namespaced) return rest.length === 1 ? { kind: "resource", type } : null;
  return { kind: "resource", type, name: rest[1], subresource: rest[2] };
}

export function verbOf(method: string, route: Route, watch: boolean): Verb {
  if (route.kind !== "resource") return "discovery";
  if (route.subresource === "exec") return "exec";
  switch (method) {
    case "POST":
      return "create";
    case "PUT":
      return "update";
    case "PATCH":
      return "patch";
    case "DELETE":
      return route.name === undefined ? "deletecollection" : "delete";
    default:
      if (route.name !== undefined) return "get";
      return watch ? "watch" : "list";
  }
}
