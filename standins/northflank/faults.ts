/**
 * Faults the northflank provider's tests ask of the stand-in: the next N
 * matching requests fail with a status and the API's error body (5xx
 * bursts, 429, 401), are served but answered with a 5xx (the answer lost),
 * are answered late, or (exec) lose their instance mid-command: it goes away
 * under the command and its socket drops. An exec refused with a status is
 * its WebSocket upgrade refused. Set in-process (`standin.faults.add`) or
 * over HTTP (`POST /standin/faults`).
 */
import { FaultTable as Faults, lostStatusIn, nonNegativeInt, parseFaultEnvelope, statusIn, type FaultRules } from "../fault-table.js";

/** The API operation a request is, as the stand-in routes it. */
export type NorthflankOp =
  | "create-service"
  | "list-services"
  | "get-service"
  | "delete-service"
  | "list-containers"
  | "create-secret"
  | "list-secrets"
  | "get-secret"
  | "delete-secret"
  | "exec";

export const OPS: readonly NorthflankOp[] = [
  "create-service",
  "list-services",
  "get-service",
  "delete-service",
  "list-containers",
  "create-secret",
  "list-secrets",
  "get-secret",
  "delete-secret",
  "exec",
];
const FAIL_CODES = [400, 401, 403, 404, 409, 429, 500, 502, 503, 504];

export type FaultAction =
  /** Answer with this status and the API's error body instead of serving the request. */
  | { type: "fail"; code: number }
  /** Serve the request, then answer with this status instead of its result (a gateway lost the answer). */
  | { type: "lose"; code: number }
  /** Serve the request this much later. */
  | { type: "delay"; ms: number }
  /** (exec) This long after the command starts, its instance goes away (TASK_FAILED, no sandbox). */
  | { type: "vanish"; afterMs: number };

export interface FaultSpec {
  /** `service`: a service id (or a secret id, for the secret operations). */
  match: { op?: NorthflankOp; service?: string };
  action: FaultAction;
  /** How many matching requests it applies to. Default 1. */
  count?: number;
}

const RULES: FaultRules = {
  match: { op: OPS, service: "string" },
  actions: {
    fail: (a) => statusIn(a, FAIL_CODES),
    lose: (a) => lostStatusIn(a, FAIL_CODES),
    delay: (a) => nonNegativeInt(a, "ms"),
    vanish: (a) => nonNegativeInt(a, "afterMs"),
  },
};

/** Checks a fault given as JSON (the admin endpoint); the message names the field at fault. */
export function parseFault(v: unknown): FaultSpec | string {
  return parseFaultEnvelope<FaultSpec>(v, RULES);
}

export class FaultTable extends Faults<FaultSpec["match"], FaultAction> {
  /** The first fault matching this request whose action is one of `types`, counted as used. */
  take(op: NorthflankOp, service: string | undefined, types: ReadonlyArray<FaultAction["type"]>): FaultAction | null {
    return this.takeWhere((m) => (m.op === undefined || m.op === op) && (m.service === undefined || m.service === service), types);
  }
}
