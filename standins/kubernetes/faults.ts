/**
 * Faults a provider's tests ask for: the next N matching requests fail with
 * a status (500, 503, 429 with Retry-After, 410, 401, 403, 409), are served
 * late, create pods that stay Pending for a while, or lose their pod
 * mid-exec (the pod is deleted out from under the client and the exec's
 * connection drops). Set in-process (`standin.faults.add`) or over HTTP
 * (`POST /standin/faults`, see standins/README.md).
 */
import { FaultTable as Faults, nonNegativeInt, optional, parseFaultEnvelope, statusIn, type ArmedFault, type FaultRules } from "../fault-table.js";

export type Verb = "get" | "list" | "watch" | "create" | "update" | "patch" | "delete" | "deletecollection" | "exec" | "discovery";

export interface FaultMatch {
  verb?: Verb;
  /** `pods`, `networkpolicies`, `namespaces`. */
  resource?: string;
  namespace?: string;
  name?: string;
}

export type FaultAction =
  /** Answer with this status instead of serving the request. */
  | { type: "fail"; code: number; retryAfterSeconds?: number; message?: string }
  /** Serve the request this much later. */
  | { type: "delay"; ms: number }
  /** (create pods) The pod stays Pending this long before its sandbox is started. */
  | { type: "slowStart"; ms: number }
  /** (exec) This long after the command starts, the pod is removed at once and the connection dropped. */
  | { type: "vanish"; afterMs: number };

export interface FaultSpec {
  match: FaultMatch;
  action: FaultAction;
  /** How many matching requests it applies to. Default 1. */
  count?: number;
}

/** A fault armed in the table (what `GET /standin/faults` lists). */
export type Fault = ArmedFault<FaultMatch, FaultAction>;

export interface RequestFacts {
  verb: Verb;
  resource?: string;
  namespace?: string;
  name?: string;
}

const VERBS: readonly Verb[] = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "exec", "discovery"];
const FAIL_CODES = [400, 401, 403, 404, 409, 410, 422, 429, 500, 503, 504];

const RULES: FaultRules = {
  match: { verb: VERBS, resource: "string", namespace: "string", name: "string" },
  actions: {
    fail: (a) =>
      statusIn(a, FAIL_CODES) ??
      optional(a, "retryAfterSeconds", nonNegativeInt) ??
      (a.message !== undefined && typeof a.message !== "string" ? "action.message: expected a string" : null),
    delay: (a) => nonNegativeInt(a, "ms"),
    slowStart: (a) => nonNegativeInt(a, "ms"),
    vanish: (a) => nonNegativeInt(a, "afterMs"),
  },
};

/** Checks a fault given as JSON (the admin endpoint); the message names the field at fault. */
export function parseFault(v: unknown): FaultSpec | string {
  return parseFaultEnvelope<FaultSpec>(v, RULES);
}

export class FaultTable extends Faults<FaultMatch, FaultAction> {
  /** The first fault matching this request whose action is one of `types`, counted as used. */
  take(facts: RequestFacts, types: ReadonlyArray<FaultAction["type"]>): FaultAction | null {
    return this.takeWhere(
      (m) =>
        (m.verb === undefined || m.verb === facts.verb) &&
        (m.resource === undefined || m.resource === facts.resource) &&
        (m.namespace === undefined || m.namespace === facts.namespace) &&
        (m.name === undefined || m.name === facts.name),
      types,
    );
  }
}
