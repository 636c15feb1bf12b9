/** The producer package: what a service needs to enqueue jobs and read results. */
export * from "./job-spec.js";
export * from "./job-result.js";
export * from "./client.js";
export { cancelChannel, type QueuedJobData } from "./queue-protocol.js";
export { DEFAULT_PREFIX, DEFAULT_QUEUE, DEFAULT_REDIS_URL } from "./redis.js";
export * from "../errors/index.js";
