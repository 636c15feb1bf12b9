/**
 * Removes every key of a benchmark's queue once it is done: each run uses
 * fresh queue names, and their retained results would otherwise stay in
 * Redis (retention is enforced only when the same queue completes more jobs).
 */
import { Queue } from "bullmq";
import { createRedis } from "../producer/redis.js";

export async function dropQueue(redisUrl: string, name: string, prefix: string): Promise<void> {
  const queue = new Queue(name, { connection: createRedis(redisUrl, "worker"), prefix });
  try {
    await queue.obliterate({ force: true });
  } finally {
    await queue.close();
    await queue.disconnect();
  }
}
