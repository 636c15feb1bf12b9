/** A producer client configured from the same variables the worker reads. */
import { SandqueueClient } from "../producer/client.js";

export function clientFromEnv(env: NodeJS.ProcessEnv, queue?: string): SandqueueClient {
  return new SandqueueClient({
    redisUrl: env.REDIS_URL || undefined,
    queue: queue ?? (env.SANDQUEUE_QUEUE || undefined),
    prefix: env.SANDQUEUE_PREFIX || undefined,
  });
}
