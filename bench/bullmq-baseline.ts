/**
 * Raw BullMQ baseline for the queue benchmark: the same add -> worker ->
 * completion event round trip sandqueue makes, with a processor that only
 * returns a small result (no validation, no sandbox). Its CPU per job is
 * the floor every queued job pays before any sandbox work.
 */
import { Queue, QueueEvents, Worker } from "bullmq";
import { randomBytes } from "node:crypto";
import { createRedis } from "../producer/redis.js";

export interface BullmqBaseline {
  once: () => Promise<void>;
  close: () => Promise<void>;
}

export async function startBullmqBaseline(redisUrl: string, concurrency: number): Promise<BullmqBaseline> {
  const name = `bench-bullmq-${randomBytes(4).toString("hex")}`;
  const queue = new Queue(name, { connection: createRedis(redisUrl, "worker") });
  const worker = new Worker(name, async (job) => ({ id: job.id, status: "succeeded", exitCode: 0, stdout: "", stderr: "" }), {
    connection: createRedis(redisUrl, "worker"),
    concurrency,
  });
  const events = new QueueEvents(name, { connection: createRedis(redisUrl, "worker") });
  await Promise.all([queue.waitUntilReady(), worker.waitUntilReady(), events.waitUntilReady()]);
  const waiters = new Map<string, () => void>();
  events.on("completed", ({ jobId }) => {
    waiters.get(jobId)?.();
    waiters.delete(jobId);
  });
  // The job options sandqueue's client sets (retries, bounded result retention).
  const opts = { attempts: 3, backoff: { type: "exponential" as const, delay: 1000 }, removeOnComplete: { age: 600, count: 10_000 } };
  return {
    once: async () => {
      const job = await queue.add("shell", { spec: { kind: "shell", script: "true" } }, opts);
      await new Promise<void>((resolve) => waiters.set(job.id!, resolve));
    },
    close: async () => {
      await worker.close();
      await events.close();
      await queue.obliterate({ force: true }).catch(() => undefined);
      await queue.close();
    },
  };
}
