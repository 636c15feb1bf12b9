/**
 * The faults a stand-in's tests ask for: each applies to the next `count`
 * matching requests (default 1), then is gone. Each stand-in says what a
 * request is (its `take`) and what its faults do.
 */
export class FaultTable<Match, Action extends { type: string }> {
  private faults: { match: Match; action: Action; count: number; used: number }[] = [];

  add(spec: { match: Match; action: Action; count?: number }): void {
    this.faults.push({ match: spec.match, action: spec.action, count: spec.count ?? 1, used: 0 });
  }

  clear(): void {
    this.faults = [];
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
