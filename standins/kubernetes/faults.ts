/**
 * Faults a provider's tests ask for: the next N matching requests fail with
 * a status (500, 503, 429 with Retry-After, 410, 401, 403, 409), are served
 * late, create pods that stay Pending for a while, or lose their pod
 * mid-exec (the pod is deleted out from under the client and the exec's
 * connection drops). Set in-process (`standin.faults.add`) or over HTTP
 * (`POST /standin/faults`, see standins/README.md).
 */

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

export interface Fault extends Required<FaultSpec> {
  id: number;
  /** Matching requests it has applied to so far. */
  used: number;
}

export interface RequestFacts {
  verb: Verb;
  resource?: string;
  namespace?: string;
  name?: string;
}

const VERBS: readonly Verb[] = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "exec", "discovery"];
const FAIL_CODES = [400, 401, 403, 404, 409, 410, 422, 429, 500, 503, 504];

/** Checks a fault given as JSON (the admin endpoint); the message names the field at fault. */
export function parseFault(v: unknown): FaultSpec | string {
  if (typeof v !== "object" || v === null) return "a fault is an object {match, action, count?}";
  const { match = {}, action, count = 1 } = v as { match?: unknown; action?: unknown; count?: unknown };
  if (typeof match !== "object" || match === null) return "match: expected an object";
  const m = match as Record<string, unknown>;
  if (m.verb !== undefined && !VERBS.includes(m.verb as Verb)) return `match.verb: expected one of ${VERBS.join(", ")}`;
  for (const k of ["resource", "namespace", "name"]) {
    if (m[k] !== undefined && typeof m[k] !== "string") return `match.${k}: expected a string`;
  }
  if (!Number.isInteger(count) || (count as number) < 1) return "count: expected an integer >= 1";
  if (typeof action !== "object" || action === null) return "action: expected an object";
  const a = action as Record<string, unknown>;
  const nonNegative = (k: string) => (Number.isInteger(a[k]) && (a[k] as number) >= 0 ? null : `action.${k}: expected an integer >= 0`);
  let problem: string | null;
  switch (a.type) {
    case "fail":
      problem = FAIL_CODES.includes(a.code as number) ? null : `action.code: expected one of ${FAIL_CODES.join(", ")}`;
      if (!problem && a.retryAfterSeconds !== undefined) problem = nonNegative("retryAfterSeconds");
      if (!problem && a.message !== undefined && typeof a.message !== "string") problem = "action.message: expected a string";
      break;
    case "delay":
    case "slowStart":
      problem = nonNegative("ms");
      break;
    case "vanish":
      problem = nonNegative("afterMs");
      break;
    default:
      problem = "action.type: expected fail, delay, slowStart or vanish";
  }
  if (problem) return problem;
  return { match: m as FaultMatch, action: a as unknown as FaultAction, count: count as number };
}

export class FaultTable {
  private nextId = 1;
  private faults: Fault[] = [];

  add(spec: FaultSpec): Fault {
    const fault: Fault = { id: this.nextId++, match: spec.match, action: spec.action, count: spec.count ?? 1, used: 0 };
    this.faults.push(fault);
    return fault;
  }

  list(): Fault[] {
    return this.faults.map((f) => ({ ...f }));
  }

  clear(): void {
    this.faults = [];
  }

  /**
   * The first fault matching this request whose action is one of `types`,
   * counted as used (and dropped once used up).
   */
  take(facts: RequestFacts, types: ReadonlyArray<FaultAction["type"]>): FaultAction | null {
    const m = (f: Fault) =>
      types.includes(f.action.type) &&
      (f.match.verb === undefined || f.match.verb === facts.verb) &&
      (f.match.resource === undefined || f.match.resource === facts.resource) &&
      (f.match.namespace === undefined || f.match.namespace === facts.namespace) &&
      (f.match.name === undefined || f.match.name === facts.name);
    const fault = this.faults.find(m);
    if (!fault) return null;
    fault.used++;
    if (fault.used >= fault.count) this.faults = this.faults.filter((f) => f !== fault);
    return fault.action;
  }
}
