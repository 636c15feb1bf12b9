/**
 * Type checks of a request body before validation. The API decodes JSON into
 * Go structs, so a wrong JSON type (a number for a name, an object for a
 * list) is a 400 BadRequest, not a 422: the same split here.
 */
import { parseQuantity } from "./quantity.js";

export type Shape = "string" | "integer" | "boolean" | "object" | "array" | "stringMap" | "quantityMap";

/** Paths with `[]` for "every element of this list". */
export type ShapeTable = Readonly<Record<string, Shape>>;

function jsonType(v: unknown): string {
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return "number";
  return typeof v;
}

function fits(v: unknown, shape: Shape): boolean {
  switch (shape) {
    case "string":
      return typeof v === "string";
    case "integer":
      return typeof v === "number" && Number.isInteger(v);
    case "boolean":
      return typeof v === "boolean";
    case "object":
      return typeof v === "object" && !Array.isArray(v);
    case "array":
      return Array.isArray(v);
    case "stringMap":
      return typeof v === "object" && !Array.isArray(v) && Object.values(v as object).every((x) => typeof x === "string");
    case "quantityMap":
      return typeof v === "object" && !Array.isArray(v);
  }
}

/** Every value found at `path` (a `[]` segment fans out over a list), with its concrete path. */
function valuesAt(root: unknown, path: string): Array<[string, unknown]> {
  let level: Array<[string, unknown]> = [["", root]];
  for (const seg of path.split(".")) {
    const list = seg.endsWith("[]");
    const key = list ? seg.slice(0, -2) : seg;
    const next: Array<[string, unknown]> = [];
    for (const [p, v] of level) {
      if (typeof v !== "object" || v === null || Array.isArray(v)) continue;
      const child = (v as Record<string, unknown>)[key];
      if (child === undefined || child === null) continue;
      const childPath = p ? `${p}.${key}` : key;
      if (list) {
        if (Array.isArray(child)) child.forEach((c, i) => next.push([`${childPath}[${i}]`, c]));
      } else {
        next.push([childPath, child]);
      }
    }
    level = next;
  }
  return level;
}

const QUANTITY_MSG = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/** The first type mismatch in `body` as the API words it, or null when every checked path fits. */
export function shapeProblem(kind: string, version: string, body: unknown, table: ShapeTable): string | null {
  const prefix = `${kind} in version "${version}" cannot be handled as a ${kind}`;
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return `${prefix}: json: cannot unmarshal ${jsonType(body)} into Go value of type ${kind}`;
  }
  for (const [path, shape] of Object.entries(table)) {
    // `a.b` is the list itself, `a.b[]` each of its elements: a table lists both.
    for (const [p, v] of valuesAt(body, path)) {
      if (!fits(v, shape)) {
        return `${prefix}: json: cannot unmarshal ${jsonType(v)} into Go struct field ${p} of type ${shape === "stringMap" ? "map[string]string" : shape}`;
      }
      if (shape === "quantityMap") {
        for (const q of Object.values(v as Record<string, unknown>)) {
          if (parseQuantity(q) === null) return `${prefix}: ${QUANTITY_MSG}`;
        }
      }
    }
  }
  return null;
}
