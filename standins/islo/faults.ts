/**
 * Faults an islo provider's tests ask for: the next N matching requests fail
 * with a status (5xx bursts, 429 with Retry-After, 401/403), are answered
 * late, or (exec) lose their sandbox mid-run. Set in-process
 * (`standin.faults.add`) or over HTTP (`POST /standin/faults`).
 */
import { FaultTable as Faults } from "../fault-table.js";

/** The API operation a request is, as the stand-in routes it. */
export type IsloOp =
  | "auth"
  | "list"
  | "create"
  | "get"
  | "delete"
  | "pause"
  | "resume"
  | "stop"
  | "exec"
  | "exec-result"
  | "files"
  | "files-archive"
  | "gateway";

export const OPS: readonly IsloOp[] = ["auth", "list", "create", "get", "delete", "pause", "resume", "stop", "exec", "exec-result", "files", "files-archive", "gateway"];
const FAIL_CODES = [400, 401, 403, 404, 409, 429, 500, 502, 503, 504];

export type FaultAction =
  /** Answer with this status and an ErrorResponse body instead of serving the request. */
  | { type: "fail"; code: number; retryAfterSeconds?: number }
  /** Serve the request this much later. */
  | { type: "delay"; ms: number }
  /** (exec) This long after the command starts, the sandbox is deleted out from under it. */
  | { type: "vanish"; afterMs: number }
  /** Serve the request, then cut the connection instead of answering (an answer lost on the way). */
  | { type: "drop" };

export interface FaultSpec {
  match: { op?: IsloOp; name?: string };
  action: FaultAction;
  /** How many matching requests it applies to. Default 1. */
  count?: number;
}


/** Checks a fault given as JSON (the admin endpoint); the message names the field at fault. */
export function parseFault(v: unknown): FaultSpec | string {
  if (typeof v !== "object" || v === null) return "a fault is an object {match, action, count?}";
  const { match = {}, action, count = 1 } = v as { match?: unknown; action?: unknown; count?: unknown };
  if (typeof match !== "object" || match === null) return "match: expected an object";
  const m = match as Record<string, unknown>;
  if (m.op !== undefined && !OPS.includes(m.op as IsloOp)) return `match.op: expected one of ${OPS.join(", ")}`;
  if (m.name !== undefined && typeof m.name !== "string") return "match.name: expected a string";
  if (!Number.isInteger(count) || (count as number) < 1) return "count: expected an integer >= 1";
  if (typeof action !== "object" || action === null) return "action: expected an object";
  const a = action as Record<string, unknown>;
  const nonNegative = (k: string) => (Number.isInteger(a[k]) && (a[k] as number) >= 0 ? null : `action.${k}: expected an integer >= 0`);
  let problem: string | null;
  switch (a.type) {
    case "fail":
      problem = FAIL_CODES.includes(a.code as number) ? null : `action.code: expected one of ${FAIL_CODES.join(", ")}`;
      if (!problem && a.retryAfterSeconds !== undefined) problem = nonNegative("retryAfterSeconds");
      break;
    case "delay":
      problem = nonNegative("ms");
      break;
    case "vanish":
      problem = nonNegative("afterMs");
      break;
    case "drop":
      problem = null;
      break;
    default:
      problem = "action.type: expected fail, delay, vanish or drop";
  }
  if (problem) return problem;
  return { match: m as FaultSpec["match"], action: a as unknown as FaultAction, count: count as number };
}

export class FaultTable extends Faults<FaultSpec["match"], FaultAction> {
  /** The first fault matching this request whose action is one of `types`, counted as used. */
  take(op: IsloOp, name: string | undefined, types: ReadonlyArray<FaultAction["type"]>): FaultAction | null {
    return this.takeWhere((m) => (m.op === undefined || m.op === op) && (m.name === undefined || m.name === name), types);
  }
}
