/**
 * Faults an islo provider's tests ask for: the next N matching requests fail
 * with a status (5xx bursts, 429 with Retry-After, 401/403), are answered
 * late, or (exec) lose their sandbox mid-run. Set in-process
 * (`standin.faults.add`) or over HTTP (`POST /standin/faults`).
 */
import { FaultTable as Faults, nonNegativeInt, optional, parseFaultEnvelope, statusIn, type FaultRules } from "../fault-table.js";

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

const RULES: FaultRules = {
  match: { op: OPS, name: "string" },
  actions: {
    fail: (a) => statusIn(a, FAIL_CODES) ?? optional(a, "retryAfterSeconds", nonNegativeInt),
    delay: (a) => nonNegativeInt(a, "ms"),
    vanish: (a) => nonNegativeInt(a, "afterMs"),
    drop: () => null,
  },
};

/** Checks a fault given as JSON (the admin endpoint); the message names the field at fault. */
export function parseFault(v: unknown): FaultSpec | string {
  return parseFaultEnvelope<FaultSpec>(v, RULES);
}

export class FaultTable extends Faults<FaultSpec["match"], FaultAction> {
  /** The first fault matching this request whose action is one of `types`, counted as used. */
  take(op: IsloOp, name: string | undefined, types: ReadonlyArray<FaultAction["type"]>): FaultAction | null {
    return this.takeWhere((m) => (m.op === undefined || m.op === op) && (m.name === undefined || m.name === name), types);
  }
}
