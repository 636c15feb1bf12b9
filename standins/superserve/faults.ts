/**
 * Faults the superserve provider's tests ask of the stand-in: the next N
 * matching requests fail with a status and the service's error body (5xx
 * bursts, 429 with Retry-After, 401/503 on the data plane, which the SDK
 * answers with one activate and one retry), are served but answered with a
 * 5xx (the answer lost), are answered late, or (exec)
 * lose their sandbox mid-run (it turns `failed`, or is `deleted`). Set
 * in-process (`standin.faults.add`) or over HTTP (`POST /standin/faults`).
 */
import { FaultTable as Faults } from "../fault-table.js";

/** The API operation a request is, as the stand-in routes it. */
export type SuperserveOp =
  | "create"
  | "list"
  | "get"
  | "update"
  | "delete"
  | "pause"
  | "resume"
  | "activate"
  | "exec"
  | "exec-stream"
  | "files-read"
  | "files-write";

export const OPS: readonly SuperserveOp[] = [
  "create",
  "list",
  "get",
  "update",
  "delete",
  "pause",
  "resume",
  "activate",
  "exec",
  "exec-stream",
  "files-read",
  "files-write",
];
const FAIL_CODES = [400, 401, 403, 404, 409, 429, 500, 502, 503, 504];

export type FaultAction =
  /** Answer with this status and the service's error body instead of serving the request. */
  | { type: "fail"; code: number; retryAfterSeconds?: number }
  /** Serve the request, then answer with this status instead of its result (a gateway lost the answer). */
  | { type: "lose"; code: number }
  /** Serve the request this much later. */
  | { type: "delay"; ms: number }
  /** (exec) This long after the command starts, the sandbox turns `failed` or is `deleted` under it. */
  | { type: "vanish"; afterMs: number; status: "failed" | "deleted" };

export interface FaultSpec {
  /** `sandbox`: a sandbox id or name. */
  match: { op?: SuperserveOp; sandbox?: string };
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
  if (m.op !== undefined && !OPS.includes(m.op as SuperserveOp)) return `match.op: expected one of ${OPS.join(", ")}`;
  if (m.sandbox !== undefined && typeof m.sandbox !== "string") return "match.sandbox: expected a string";
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
    case "lose":
      problem = FAIL_CODES.includes(a.code as number) && (a.code as number) >= 500 ? null : "action.code: expected a 5xx status";
      break;
    case "delay":
      problem = nonNegative("ms");
      break;
    case "vanish":
      problem = nonNegative("afterMs") ?? (a.status === "failed" || a.status === "deleted" ? null : "action.status: expected failed or deleted");
      break;
    default:
      problem = "action.type: expected fail, lose, delay or vanish";
  }
  if (problem) return problem;
  return { match: m as FaultSpec["match"], action: a as unknown as FaultAction, count: count as number };
}

export class FaultTable extends Faults<FaultSpec["match"], FaultAction> {
  /** The first fault matching this request whose action is one of `types`, counted as used. */
  take(op: SuperserveOp, sandbox: readonly string[], types: ReadonlyArray<FaultAction["type"]>): FaultAction | null {
    return this.takeWhere((m) => (m.op === undefined || m.op === op) && (m.sandbox === undefined || sandbox.includes(m.sandbox)), types);
  }
}
