/** A producer client configured from the same variables the worker reads. */
import { SandqueueClient } from "../producer/client.js";
import { queueNameProblem } from "../producer/redis.js";
import { usage } from "./args.js";

/** The queue from `--queue` or SANDQUEUE_QUEUE, checked up front so the message names where it came from. */
export function queueFrom(env: NodeJS.ProcessEnv, flag: string | undefined): string | undefined {
  const queue = flag ?? (env.SANDQUEUE_QUEUE || undefined);
  const problem = queue === undefined ? null : queueNameProblem(queue);
  if (problem) throw usage(`${flag !== undefined ? "--queue " : "SANDQUEUE_QUEUE="}${JSON.stringify(queue)}: ${problem}`);
  return queue;
}

export function clientFromEnv(env: NodeJS.ProcessEnv, queue?: string): SandqueueClient {
  return new SandqueueClient({
    redisUrl: env.REDIS_URL || undefined,
    queue: queueFrom(env, queue),
    prefix: env.SANDQUEUE_PREFIX || undefined,
  });
}
