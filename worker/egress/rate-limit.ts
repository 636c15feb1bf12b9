/**
 * `ratePerMinute` as a token bucket per job and rule: a bucket holds up to
 * `ratePerMinute` requests (a burst of a minute's worth, the rule's whole
 * allowance at once) and refills continuously at ratePerMinute / 60 per
 * second. A request finding it empty is refused with the seconds until the
 * next token (Retry-After).
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private readonly perMs: number;

  constructor(
    private readonly perMinute: number,
    now: number = performance.now(),
  ) {
    this.tokens = perMinute;
    this.last = now;
    this.perMs = perMinute / 60_000;
  }

  /** Takes one token; when there is none, says how many whole seconds until there is. */
  take(now: number = performance.now()): { ok: true } | { ok: false; retryAfterSeconds: number } {
    this.tokens = Math.min(this.perMinute, this.tokens + Math.max(0, now - this.last) * this.perMs);
    this.last = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return { ok: true };
    }
    return { ok: false, retryAfterSeconds: Math.max(1, Math.ceil((1 - this.tokens) / this.perMs / 1000)) };
  }
}
