/**
 * The faults a stand-in's tests ask for: each applies to the next `count`
 * matching requests (default 1), then is gone. Each stand-in says what a
 * request is (its `take`) and what its faults do; `parseFaultEnvelope`
 * checks the {match, action, count?} every admin endpoint takes, by that
 * stand-in's rules.
 */

/** A fault as the table holds it (and the kubernetes admin endpoint lists it). */
export interface ArmedFault<Match, Action> {
  id: number;
  match: Match;
  action: Action;
  count: number;
  /** Matching requests it has applied to so far. */
  used: number;
}

export class FaultTable<Match, Action extends { type: string }> {
  private nextId = 1;
  private faults: ArmedFault<Match, Action>[] = [];

  add(spec: { match: Match; action: Action; count?: number }): ArmedFault<Match, Action> {
    const fault = { id: this.nextId++, match: spec.match, action: spec.action, count: spec.count ?? 1, used: 0 };
    this.faults.push(fault);
    return fault;
  }

  clear(): void {
    this.faults = [];
  }

  /** Copies of the faults not used up yet. */
  list(): ArmedFault<Match, Action>[] {
    return this.faults.map((f) => ({ ...f }));
  }

  /** Faults not used up yet. */
  get pending(): number {
    return this.faults.length;
  }

  /** The first fault whose match `fits` the request and whose action is one of `types`, counted as used. */
  protected takeWhere(fits: (match: Match) => boolean, types: ReadonlyArray<Action["type"]>): Action | null {
    const fault = this.faults.find((f) => types.includes(f.action.type) && fits(f.match));
    if (!fault) return null;
    fault.used++;
    if (fault.used >= fault.count) this.faults = this.faults.filter((f) => f !== fault);
    return fault.action;
  }
}

type Fields = Record<string, unknown>;

/** What one stand-in's faults may say; messages name the field at fault. */
export interface FaultRules {
  /** Each match field, in the order checked: the values it takes, or "string" for any string. */
  match: Record<string, readonly string[] | "string">;
  /** Each action type, in the order the error lists them: the problem with its fields, or null. */
  actions: Record<string, (a: Fields) => string | null>;
}

/** Checks a fault given as JSON (an admin endpoint): the fault, or a message naming the field at fault. */
export function parseFaultEnvelope<Spec>(v: unknown, rules: FaultRules): Spec | string {
  if (typeof v !== "object" || v === null) return "a fault is an object {match, action, count?}";
  const { match = {}, action, count = 1 } = v as { match?: unknown; action?: unknown; count?: unknown };
  if (typeof match !== "object" || match === null) return "match: expected an object";
  const m = match as Fields;
  for (const [k, takes] of Object.entries(rules.match)) {
    if (m[k] === undefined) continue;
    if (takes === "string" && typeof m[k] !== "string") return `match.${k}: expected a string`;
    if (takes !== "string" && !takes.includes(m[k] as string)) return `match.${k}: expected one of ${takes.join(", ")}`;
  }
  if (!Number.isInteger(count) || (count as number) < 1) return "count: expected an integer >= 1";
  if (typeof action !== "object" || action === null) return "action: expected an object";
  const a = action as Fields;
  const check = Object.hasOwn(rules.actions, a.type as string) ? rules.actions[a.type as string] : undefined;
  const types = Object.keys(rules.actions);
  const problem = check ? check(a) : `action.type: expected ${types.slice(0, -1).join(", ")} or ${types.at(-1)}`;
  if (problem) return problem;
  return { match: m, action: a, count } as Spec;
}

/** `action.code` is one of `codes`. */
export function statusIn(a: Fields, codes: readonly number[]): string | null {
  return codes.includes(a.code as number) ? null : `action.code: expected one of ${codes.join(", ")}`;
}

/** `action.code` is a 5xx one of `codes` (an answer a gateway lost). */
export function lostStatusIn(a: Fields, codes: readonly number[]): string | null {
  return codes.includes(a.code as number) && (a.code as number) >= 500 ? null : "action.code: expected a 5xx status";
}

/** `action[k]` is an integer >= 0. */
export function nonNegativeInt(a: Fields, k: string): string | null {
  return Number.isInteger(a[k]) && (a[k] as number) >= 0 ? null : `action.${k}: expected an integer >= 0`;
}

/** `action[k]`, when given, passes `check`. */
export function optional(a: Fields, k: string, check: (a: Fields, k: string) => string | null): string | null {
  return a[k] === undefined ? null : check(a, k);
}

/** `action[k]` is a finite number >= 0. */
export function nonNegativeNumber(a: Fields, k: string): string | null {
  return typeof a[k] === "number" && Number.isFinite(a[k]) && (a[k] as number) >= 0 ? null : `action.${k}: expected a number >= 0`;
}
