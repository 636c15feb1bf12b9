/**
 * Faults the superserve provider's tests ask of the stand-in: the next N
 * matching requests fail with a status and the service's error body (5xx
 * bursts, 429 with Retry-After, 401/503 on the data plane, which the SDK
 * answers with one activate and one retry), are served but answered with a
 * 5xx (the answer lost), are answered late, or (exec)
 * lose their sandbox mid-run (it turns `failed`, or is `deleted`). Set
 * in-process (`standin.faults.add`) or over HTTP (`POST /standin/faults`).
 */
import { FaultTable as Faults, lostStatusIn, nonNegativeInt, optional, parseFaultEnvelope, statusIn, type FaultRules } from "../fault-table.js";

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

const RULES: FaultRules = {
  match: { op: OPS, sandbox: "string" },
  actions: {
    fail: (a) => statusIn(a, FAIL_CODES) ?? optional(a, "retryAfterSeconds", nonNegativeInt),
    lose: (a) => lostStatusIn(a, FAIL_CODES),
    delay: (a) => nonNegativeInt(a, "ms"),
    vanish: (a) => nonNegativeInt(a, "afterMs") ?? (a.status === "failed" || a.status === "deleted" ? null : "action.status: expected failed or deleted"),
  },
};

/** Checks a fault given as JSON (the admin endpoint); the message names the field at fault. */
export function parseFault(v: unknown): FaultSpec | string {
  return parseFaultEnvelope<FaultSpec>(v, RULES);
}

export class FaultTable extends Faults<FaultSpec["match"], FaultAction> {
  /** The first fault matching this request whose action is one of `types`, counted as used. */
  take(op: SuperserveOp, sandbox: readonly string[], types: ReadonlyArray<FaultAction["type"]>): FaultAction | null {
    return this.takeWhere((m) => (m.op === undefined || m.op === op) && (m.sandbox === undefined || sandbox.includes(m.sandbox)), types);
  }
}
