/**
 * State changes of jobs for GET /v1/jobs/{id}/events: one BullMQ event
 * stream reader per API process serves every open stream (a map of
 * listeners keyed by job id), as the producer client's waiters do.
 */
import { QueueEvents } from "bullmq";
import type { Redis } from "ioredis";
import { withTimeout } from "../errors/index.js";
import { createRedis, redisUnavailable } from "../producer/redis.js";
import type { JobState } from "./job-view.js";

export type JobEvent = JobState | "cancelled";
type Listener = (e: JobEvent) => void;

const EVENT_STATES: Record<string, JobEvent> = {
  waiting: "queued",
  active: "running",
  delayed: "retrying",
  completed: "finished",
  failed: "finished",
  removed: "cancelled",
};

export class JobEventHub {
  private readonly listeners = new Map<string, Set<Listener>>();
  private events: QueueEvents | undefined;
  private eventsRedis: Redis | undefined;
  private ready: Promise<void> | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly url: string,
    private readonly queue: string,
    private readonly prefix: string,
  ) {}

  /** Listens to one job's events until the returned function is called. */
  async subscribe(jobId: string, listener: Listener): Promise<() => void> {
    await this.start();
    let set = this.listeners.get(jobId);
    if (!set) this.listeners.set(jobId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.listeners.delete(jobId);
    };
  }

  private start(): Promise<void> {
    this.ready ??= (async () => {
      // From the server's "now", not from the first blocking read ('$'): see the producer client.
      const [sec, usec] = await this.redis.time();
      this.eventsRedis = createRedis(this.url, "worker");
      const events = new QueueEvents(this.queue, {
        connection: this.eventsRedis,
        prefix: this.prefix,
        lastEventId: `${Number(sec) * 1000 + Math.floor(Number(usec) / 1000) - 1}-0`,
      });
      this.events = events;
      events.on("error", () => {});
      for (const [name, state] of Object.entries(EVENT_STATES)) {
        events.on(name as "waiting", ({ jobId }: { jobId: string }) => {
          for (const l of [...(this.listeners.get(jobId) ?? [])]) l(state);
        });
      }
      await withTimeout(events.waitUntilReady(), 2000, () => redisUnavailable(this.url, "event stream not ready"));
    })();
    this.ready.catch(() => {
      this.ready = undefined;
    });
    return this.ready;
  }

  get size(): number {
    return this.listeners.size;
  }

  async close(): Promise<void> {
    this.listeners.clear();
    await withTimeout(Promise.resolve(this.events?.close()), 1000).catch(() => {});
    this.eventsRedis?.disconnect();
  }
}
