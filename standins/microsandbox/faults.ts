/**
 * Faults the remote stand-ins (microsandbox, provisioner) inject on request:
 * the next N matching requests fail with an HTTP status (5xx bursts, 429
 * with Retry-After, 401/403), are answered late, or (exec) lose their
 * sandbox part-way: it is deleted out from under the running command.
 * Set in-process (`standin.faults.add`) or over HTTP
 * (`POST /standin/faults`, see standins/README.md).
 */
import { FaultTable as Faults } from "../fault-table.js";

export interface FaultMatch {
  /** microsandbox: a JSON-RPC method (`sandbox.command.run`); provisioner: `create`, `get`, `list`, `delete`, `exec`, `upload`, `download`, `ready`. */
  op?: string;
  /** Only requests about this sandbox. */
  sandbox?: string;
}

export type FaultAction =
  | { type: "fail"; code: number; retryAfterSeconds?: number; message?: string }
  | { type: "delay"; ms: number }
  /** (exec) The sandbox is deleted this long after the command starts. */
  | { type: "vanish"; afterMs: number };

export interface FaultSpec {
  match: FaultMatch;
  action: FaultAction;
  /** How many matching requests it applies to. Default 1. */
  count?: number;
}


const FAIL_CODES = [400, 401, 403, 404, 409, 429, 500, 502, 503, 504];

/** Checks a fault given as JSON; the message names the field at fault. */
export function parseFault(v: unknown): FaultSpec | string {
  if (typeof v !== "object" || v === null) return "a fault is an object {match, action, count?}";
  const { match = {}, action, count = 1 } = v as { match?: unknown; action?: unknown; count?: unknown };
  if (typeof match !== "object" || match === null) return "match: expected an object";
  const m = match as Record<string, unknown>;
  for (const k of ["op", "sandbox"]) if (m[k] !== undefined && typeof m[k] !== "string") return `match.${k}: expected a string`;
  if (!Number.isInteger(count) || (count as number) < 1) return "count: expected an integer >= 1";
  if (typeof action !== "object" || action === null) return "action: expected an object";
  const a = action as Record<string, unknown>;
  const nonNegative = (k: string): boolean => typeof a[k] === "number" && Number.isFinite(a[k]) && (a[k] as number) >= 0;
  switch (a.type) {
    case "fail":
      if (!FAIL_CODES.includes(a.code as number)) return `action.code: expected one of ${FAIL_CODES.join(", ")}`;
      if (a.retryAfterSeconds !== undefined && !nonNegative("retryAfterSeconds")) return "action.retryAfterSeconds: expected a number >= 0";
      break;
    case "delay":
      if (!nonNegative("ms")) return "action.ms: expected a number >= 0";
      break;
    case "vanish":
      if (!nonNegative("afterMs")) return "action.afterMs: expected a number >= 0";
      break;
    default:
      return "action.type: expected fail, delay or vanish";
  }
  return { match: m as FaultMatch, action: action as FaultAction, count: count as number };
}

export class FaultTable extends Faults<FaultMatch, FaultAction> {
  /** The first fault matching this request (consumed once), if any. */
  take(op: string, sandbox?: string, types: FaultAction["type"][] = ["fail", "delay", "vanish"]): FaultAction | null {
    return this.takeWhere((m) => (m.op === undefined || m.op === op) && (m.sandbox === undefined || m.sandbox === sandbox), types);
  }
}
