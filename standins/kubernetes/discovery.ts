/**
 * Discovery: what kubectl and client libraries read before anything else
 * (/version, /api, /api/v1, /apis, /apis/<group>, /apis/<group>/<version>).
 * Served in the legacy (unaggregated) form, which every client accepts:
 * newer clients that ask for aggregated discovery fall back to it.
 */
import type { ResourceType } from "./resource-type.js";
import { apiVersionOf } from "./resource-type.js";

/** The Kubernetes version the stand-in follows (the exec v5 protocol is served from 1.30). */
export const SERVER_VERSION = { major: "1", minor: "30", gitVersion: "v1.30.0+sandqueue-standin" };

export function versionInfo(): Record<string, string> {
  return {
    ...SERVER_VERSION,
    gitCommit: "0000000000000000000000000000000000000000",
    gitTreeState: "clean",
    buildDate: "2026-01-01T00:00:00Z",
    goVersion: "go1.22.0",
    compiler: "gc",
    platform: "linux/amd64",
  };
}

export function coreVersions(serverAddress: string): Record<string, unknown> {
  return { kind: "APIVersions", versions: ["v1"], serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress }] };
}

function groupVersions(types: readonly ResourceType[]): Map<string, string[]> {
  const groups = new Map<string, string[]>();
  for (const t of types) {
    if (!t.gr.group) continue;
    const versions = groups.get(t.gr.group) ?? [];
    if (!versions.includes(t.version)) versions.push(t.version);
    groups.set(t.gr.group, versions);
  }
  return groups;
}

function group(name: string, versions: string[]): Record<string, unknown> {
  const list = versions.map((v) => ({ groupVersion: `${name}/${v}`, version: v }));
  return { name, versions: list, preferredVersion: list[0] };
}

export function groupList(types: readonly ResourceType[]): Record<string, unknown> {
  return { kind: "APIGroupList", apiVersion: "v1", groups: [...groupVersions(types)].map(([n, v]) => group(n, v)) };
}

export function apiGroup(types: readonly ResourceType[], name: string): Record<string, unknown> | null {
  const versions = groupVersions(types).get(name);
  return versions ? { kind: "APIGroup", apiVersion: "v1", ...group(name, versions) } : null;
}

/** The APIResourceList of one group version, subresources included (pods/exec is what `kubectl exec` looks for). */
export function resourceList(types: readonly ResourceType[], group: string, version: string): Record<string, unknown> | null {
  const mine = types.filter((t) => t.gr.group === group && t.version === version);
  if (mine.length === 0) return null;
  const resources = mine.flatMap((t) => {
    const main = {
      name: t.gr.resource,
      singularName: t.singular,
      namespaced: t.namespaced,
      kind: t.kind,
      verbs: t.verbs,
      ...(t.shortNames.length ? { shortNames: t.shortNames } : {}),
      ...(t.kind === "Pod" ? { categories: ["all"] } : {}),
    };
    if (t.kind !== "Pod") return [main];
    return [
      main,
      { name: "pods/exec", singularName: "", namespaced: true, kind: "PodExecOptions", verbs: ["create", "get"] },
      { name: "pods/status", singularName: "", namespaced: true, kind: "Pod", verbs: ["get", "patch", "update"] },
    ];
  });
  return { kind: "APIResourceList", apiVersion: "v1", groupVersion: apiVersionOf(mine[0]!), resources };
}
