/**
 * PATCH bodies: JSON Patch (RFC 6902; what @kubernetes/client-node sends by
 * default), JSON merge patch (RFC 7386) and strategic merge patch (kubectl's
 * default: a merge patch whose lists of containers, volumes, mounts and env
 * merge by name). Errors are the API's: 400 for a patch that does not parse,
 * 422 for one that does not apply.
 */
import { badRequest, failure, type Status } from "./status.js";

type Json = unknown;
type JsonObject = Record<string, unknown>;

const isObject = (v: unknown): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v);

export const PATCH_TYPES = {
  json: "application/json-patch+json",
  merge: "application/merge-patch+json",
  strategic: "application/strategic-merge-patch+json",
} as const;

function mergePatch(target: Json, patch: Json): Json {
  if (!isObject(patch)) return patch;
  const out: JsonObject = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** Lists merged element by element on this key in a strategic merge patch (core/v1's patchMergeKey). */
const MERGE_KEYS: Record<string, string> = {
  containers: "name",
  initContainers: "name",
  volumes: "name",
  volumeMounts: "mountPath",
  env: "name",
  ports: "containerPort",
};

function strategicPatch(target: Json, patch: Json, key?: string): Json {
  const mergeKey = key === undefined ? undefined : MERGE_KEYS[key];
  if (Array.isArray(patch) && mergeKey && Array.isArray(target)) {
    const out = target.map((t) => structuredClone(t) as Json);
    for (const p of patch) {
      if (!isObject(p)) continue;
      const i = out.findIndex((t) => isObject(t) && t[mergeKey] === p[mergeKey]);
      if (p.$patch === "delete") {
        if (i >= 0) out.splice(i, 1);
      } else if (i >= 0) {
        out[i] = strategicPatch(out[i], p);
      } else {
        out.push(p);
      }
    }
    return out;
  }
  if (!isObject(patch)) return patch;
  const out: JsonObject = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (k.startsWith("$")) continue;
    if (v === null) delete out[k];
    else out[k] = strategicPatch(out[k], v, k);
  }
  return out;
}

interface Op {
  op: string;
  path: string;
  value?: Json;
  from?: string;
}

/** Why a patch does not apply: control flow inside this module, turned into a 422 by applyPatch. */
class PatchFailure {
  constructor(readonly message: string) {}
}

function pointer(path: string): string[] {
  if (path === "") return [];
  if (!path.startsWith("/")) throw new PatchFailure(`invalid JSON pointer: ${path}`);
  return path.slice(1).split("/").map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
}

function parentOf(doc: Json, tokens: string[], path: string): { parent: JsonObject | Json[]; last: string } {
  let cur: Json = doc;
  for (const t of tokens.slice(0, -1)) {
    if (Array.isArray(cur)) cur = cur[Number(t)];
    else if (isObject(cur)) cur = cur[t];
    else cur = undefined;
    if (cur === undefined) throw new PatchFailure(`doc is missing path: "${path}": missing value`);
  }
  if (!Array.isArray(cur) && !isObject(cur)) throw new PatchFailure(`doc is missing path: "${path}": missing value`);
  return { parent: cur, last: tokens.at(-1)! };
}

function getAt(doc: Json, path: string): Json {
  const tokens = pointer(path);
  if (tokens.length === 0) return doc;
  const { parent, last } = parentOf(doc, tokens, path);
  const v = Array.isArray(parent) ? parent[Number(last)] : parent[last];
  if (v === undefined) throw new PatchFailure(`doc is missing path: "${path}": missing value`);
  return v;
}

function removeAt(doc: Json, path: string): Json {
  const { parent, last } = parentOf(doc, pointer(path), path);
  if (Array.isArray(parent)) {
    const i = Number(last);
    if (!Number.isInteger(i) || i < 0 || i >= parent.length) throw new PatchFailure(`unable to remove nonexistent key: ${last}: missing value`);
    return parent.splice(i, 1)[0];
  }
  if (!(last in parent)) throw new PatchFailure(`unable to remove nonexistent key: ${last}: missing value`);
  const v = parent[last];
  delete parent[last];
  return v;
}

function addAt(doc: Json, path: string, value: Json, replace: boolean): Json {
  const tokens = pointer(path);
  if (tokens.length === 0) return value;
  const { parent, last } = parentOf(doc, tokens, path);
  if (Array.isArray(parent)) {
    const i = last === "-" ? parent.length : Number(last);
    if (!Number.isInteger(i) || i < 0 || i > parent.length || (replace && i >= parent.length)) {
      throw new PatchFailure(`index out of range: ${path}`);
    }
    parent.splice(i, replace ? 1 : 0, value);
  } else {
    if (replace && !(last in parent)) throw new PatchFailure(`doc is missing key: ${path}: missing value`);
    parent[last] = value;
  }
  return doc;
}

function jsonPatch(doc: Json, ops: Op[]): Json {
  let out = structuredClone(doc);
  for (const o of ops) {
    switch (o.op) {
      case "add":
        out = addAt(out, o.path, structuredClone(o.value), false);
        break;
      case "replace":
        out = addAt(out, o.path, structuredClone(o.value), true);
        break;
      case "remove":
        removeAt(out, o.path);
        break;
      case "move": {
        const v = removeAt(out, o.from ?? "");
        out = addAt(out, o.path, v, false);
        break;
      }
      case "copy":
        out = addAt(out, o.path, structuredClone(getAt(out, o.from ?? "")), false);
        break;
      case "test":
        if (JSON.stringify(getAt(out, o.path)) !== JSON.stringify(o.value)) throw new PatchFailure(`testing value ${o.path} failed: test failed`);
        break;
      default:
        throw new PatchFailure(`Unexpected kind: ${o.op}`);
    }
  }
  return out;
}

/** The patched object, or the API's error for this patch. `contentType` is the request's, parameters stripped. */
export function applyPatch(contentType: string, target: JsonObject, body: Json): JsonObject | Status {
  try {
    let result: Json;
    if (contentType === PATCH_TYPES.json) {
      if (!Array.isArray(body) || !body.every((o) => isObject(o) && typeof o.op === "string" && typeof o.path === "string")) {
        return badRequest("json: cannot unmarshal object into Go value of type jsonpatch.Patch");
      }
      result = jsonPatch(target, body as unknown as Op[]);
    } else if (contentType === PATCH_TYPES.merge) {
      result = mergePatch(target, body);
    } else if (contentType === PATCH_TYPES.strategic) {
      result = strategicPatch(target, body);
    } else {
      return failure(415, "UnsupportedMediaType", `the body of the request was in an unknown format - accepted media types include: ${Object.values(PATCH_TYPES).join(", ")}, application/apply-patch+yaml`);
    }
    if (!isObject(result)) return badRequest("the patch did not produce an object");
    return result;
  } catch (err) {
    if (err instanceof PatchFailure) return failure(422, "Invalid", err.message);
    throw err;
  }
}
