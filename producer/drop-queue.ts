/**
 * Removes every key of a queue: jobs in any state, results, events, meta.
 * For throwaway queues (the demo's, the benchmarks', the tests'): each uses
 * a fresh name, and its retained results would otherwise stay in Redis
 * (retention is enforced only when the same queue completes more jobs).
 */
import { Queue } from "bullmq";
import { withProducerConnection } from "./redis.js";

export async function dropQueue(redisUrl: string, name: string, prefix: string): Promise<void> {
  // A producer connection: fails instead of waiting forever when Redis is gone.
  await withProducerConnection(redisUrl, async (connection) => {
    const queue = new Queue(name, { connection, prefix });
    try {
      await queue.obliterate({ force: true });
    } finally {
      await queue.close();
    }
  });
}
