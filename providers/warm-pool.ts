/**
 * Warm pool: sandboxes created ahead of demand so `acquire` only pays for
 * handing one out (docker containers, kubernetes pods, E2B sandboxes).
 * Sandboxes are never reused across jobs; the pool only moves create+start
 * off the critical path.
 *
 * Keyed by what a sandbox cannot change after its create, as each provider
 * says: docker by (image, memoryMb, pids), since Podman 4.3's compat API has
 * no `POST /containers/{id}/update` (404) and its libpod update fails under
 * cgroup v1 (`runc update` exits 1); kubernetes by (image, memory); e2b by
 * template. A key is learnt from the first acquire that asks for it (or
 * from `prewarm`); keys unused for `keyIdleMs` are dropped with their
 * sandboxes.
 */
export interface WarmPoolOptions {
  /** Ready containers kept per key. 0 disables the pool. */
  minIdle: number;
  /** Cap on containers the pool holds (ready + being created), all keys together. */
  maxSize: number;
  /** A key nobody asked for during this long is dropped. Default 10 min. */
  keyIdleMs?: number;
  /**
   * Containers created at once per key. Default 2: with jobs served over
   * attach, creation is what limits throughput, and two creates at once
   * keep a 2-core host busy (docs/PERFORMANCE.md has the figures).
   */
  fillConcurrency?: number;
}

export interface PoolMember {
  id: string;
}

interface KeyState<T> {
  idle: T[];
  creating: number;
  /** Acquires waiting for a container being created (never more than `creating`). */
  waiters: Array<(member: T | undefined) => void>;
  lastDemand: number;
  template: unknown;
}

export class WarmPool<T extends PoolMember> {
  private readonly keys = new Map<string, KeyState<T>>();
  private closed = false;
  private readonly inflight = new Set<Promise<void>>();
  private failures = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  /** Acquires served by a ready container. */
  hits = 0;
  /** Acquires served by a container that was being created when they asked. */
  waits = 0;
  /** Acquires the pool could not serve (the caller creates one). */
  misses = 0;

  constructor(
    private readonly opts: WarmPoolOptions,
    private readonly create: (template: unknown) => Promise<T>,
    private readonly destroy: (member: T) => Promise<void>,
  ) {}

  get enabled(): boolean {
    return this.opts.minIdle > 0 && this.opts.maxSize > 0;
  }

  /**
   * Takes a ready container for `key`; else, when more are being created for
   * the key than acquires already wait for, the next one that is ready
   * (already part way, so sooner than a create of one's own, and the host
   * does not run more creates at once than the pool allows). Undefined: the
   * caller creates one. Registers the demand either way.
   */
  async take(key: string, template: unknown, signal?: AbortSignal): Promise<T | undefined> {
    if (!this.enabled || this.closed) return undefined;
    let state = this.keys.get(key);
    if (!state) {
      state = { idle: [], creating: 0, waiters: [], lastDemand: Date.now(), template };
      this.keys.set(key, state);
    }
    state.lastDemand = Date.now();
    const member = state.idle.shift();
    if (member) {
      this.hits++;
      this.refill();
      return member;
    }
    const waiters = state.waiters;
    let waiter: (m: T | undefined) => void = () => {};
    const got = new Promise<T | undefined>((resolve) => (waiter = resolve));
    waiters.push(waiter);
    // A waiter counts as demand: the refill starts a creation for it when
    // the caps (fillConcurrency, maxSize) allow.
    this.refill();
    if (state.creating < waiters.length || signal?.aborted) {
      waiters.splice(waiters.indexOf(waiter), 1);
      this.misses++;
      return undefined;
    }
    const onAbort = (): void => {
      const i = waiters.indexOf(waiter);
      if (i >= 0) waiters.splice(i, 1);
      waiter(undefined);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    const m = await got;
    signal?.removeEventListener("abort", onAbort);
    if (m) this.waits++;
    else this.misses++;
    return m;
  }

  /** Registers demand for `key` without taking anything (prewarming). */
  register(key: string, template: unknown): void {
    if (!this.enabled || this.closed) return;
    const state = this.keys.get(key);
    if (state) state.lastDemand = Date.now();
    else this.keys.set(key, { idle: [], creating: 0, waiters: [], lastDemand: Date.now(), template });
    this.refill();
  }

  /** Ready containers per key. */
  idleByKey(): Map<string, number> {
    return new Map([...this.keys].map(([k, s]) => [k, s.idle.length]));
  }

  /** Counts of ready containers per key (tests, metrics). */
  idleCount(key?: string): number {
    if (key !== undefined) return this.keys.get(key)?.idle.length ?? 0;
    let n = 0;
    for (const s of this.keys.values()) n += s.idle.length;
    return n;
  }

  /** Resolves once every key has minIdle ready containers (or the pool is full). */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      this.refill();
      if (this.inflight.size === 0) return;
      await Promise.race([...this.inflight]);
    }
  }

  private total(): number {
    let n = 0;
    for (const s of this.keys.values()) n += s.idle.length + s.creating;
    return n;
  }

  private refill(): void {
    if (this.closed || !this.enabled || this.retryTimer) return;
    const now = Date.now();
    for (const [key, state] of this.keys) {
      if (now - state.lastDemand > (this.opts.keyIdleMs ?? 600_000)) {
        this.keys.delete(key);
        for (const m of state.idle.splice(0)) this.track(this.destroy(m).catch(() => {}));
        continue;
      }
      while (
        state.creating < (this.opts.fillConcurrency ?? 2) &&
        state.idle.length + state.creating < this.opts.minIdle + state.waiters.length &&
        this.total() < this.opts.maxSize
      ) {
        state.creating++;
        this.track(this.fillOne(state));
      }
    }
  }

  private async fillOne(state: KeyState<T>): Promise<void> {
    try {
      const member = await this.create(state.template);
      this.failures = 0;
      if (this.closed) {
        await this.destroy(member).catch(() => {});
      } else {
        const waiter = state.waiters.shift();
        if (waiter) waiter(member);
        else if (!this.keys.has(this.keyOf(state))) await this.destroy(member).catch(() => {});
        else state.idle.push(member);
      }
    } catch {
      // Engine down or image gone: back off instead of spinning; acquire
      // reports the real error on its cold path.
      this.failures++;
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        this.refill();
      }, Math.min(30_000, 250 * 2 ** this.failures));
      this.retryTimer.unref();
    } finally {
      state.creating--;
    }
    this.refill();
    // Waiters no creation in flight will serve (backing off, caps) create their own.
    for (const w of state.waiters.splice(state.creating)) w(undefined);
  }

  private keyOf(state: KeyState<T>): string {
    for (const [k, s] of this.keys) if (s === state) return k;
    return "";
  }

  private track(p: Promise<void>): void {
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p));
  }

  /** Stops refilling and destroys every ready container, waiting for creations in flight. */
  async drain(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    while (this.inflight.size) await Promise.allSettled([...this.inflight]);
    const members: T[] = [];
    for (const s of this.keys.values()) {
      members.push(...s.idle.splice(0));
      for (const w of s.waiters.splice(0)) w(undefined);
    }
    this.keys.clear();
    await Promise.allSettled(members.map((m) => this.destroy(m)));
  }
}
