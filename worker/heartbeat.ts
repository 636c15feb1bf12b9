/**
 * Worker heartbeats in Redis: the ownership signal that lets any worker, on
 * any host, reap the sandboxes of a dead one. Each worker keeps a key with a
 * TTL and refreshes it at a third of the TTL; a worker whose key has expired
 * is dead. Keys are named by the worker's label-safe id, which is what
 * sandboxes carry, so a reaper maps a label to a key without a lookup table.
 *
 * A worker cut off from Redis stops refreshing and is then treated as dead
 * by the others: consistent with BullMQ, whose locks expire at the same
 * moment and hand its jobs to another worker.
 */
import type { Redis } from "ioredis";
import { labelSafe, type OwnerLiveness } from "../providers/provider.js";

export function heartbeatKey(prefix: string, workerLabel: string): string {
  return `${prefix}:sandqueue:worker:${workerLabel}`;
}

export class Heartbeat implements OwnerLiveness {
  private timer: NodeJS.Timeout | undefined;
  readonly key: string;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    readonly workerId: string,
    readonly ttlMs: number,
    private readonly info: Record<string, unknown> = {},
    private readonly onError: (err: Error) => void = () => {},
  ) {
    this.key = heartbeatKey(prefix, labelSafe(workerId));
  }

  /** Writes the key now (so no reaper can see this worker as dead), then keeps it fresh. */
  async start(): Promise<void> {
    await this.beat();
    this.timer = setInterval(() => void this.beat().catch((err: Error) => this.onError(err)), Math.max(100, Math.floor(this.ttlMs / 3)));
    this.timer.unref();
  }

  private async beat(): Promise<void> {
    await this.redis.set(this.key, JSON.stringify({ worker: this.workerId, at: Date.now(), ...this.info }), "PX", this.ttlMs);
  }

  /**
   * Stops beating and removes the key: called once every sandbox of this
   * worker is gone. Bounded: with Redis down the key simply expires.
   */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.redis.status !== "ready") return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.redis.del(this.key).catch(() => 0), new Promise((r) => (timer = setTimeout(r, 1000)))]);
    clearTimeout(timer);
  }

  async liveOwners(workerLabels: readonly string[]): Promise<ReadonlySet<string>> {
    const ids = [...new Set(workerLabels.filter((l) => l !== ""))];
    if (ids.length === 0) return new Set();
    // EXISTS with many keys only counts them; one reply per id says which.
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.exists(heartbeatKey(this.prefix, id));
    const replies = (await pipeline.exec()) ?? [];
    const live = new Set<string>();
    replies.forEach(([err, n], i) => {
      if (err) throw err;
      if (n === 1) live.add(ids[i]!);
    });
    return live;
  }

  /**
   * The label of every live worker (every heartbeat key), for reapers of
   * services whose sandbox names carry only a hash of the owner
   * (providers/remote/sandbox-names.ts).
   */
  async liveOwnerLabels(): Promise<ReadonlySet<string>> {
    const head = heartbeatKey(this.prefix, "");
    const pattern = `${head.replace(/[*?[\]\\]/g, "\\$&")}*`;
    const live = new Set<string>();
    let cursor = "0";
    do {
      const [next, keys] = await this.redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
      cursor = next;
      for (const k of keys) live.add(k.slice(head.length));
    } while (cursor !== "0");
    return live;
  }
}
