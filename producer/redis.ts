/**
 * Redis connections with the two behaviours the system needs:
 *
 * - "producer": calls made while Redis is down fail fast with
 *   SANDQ_ERR_REDIS_UNAVAILABLE instead of queueing forever, while the client
 *   keeps reconnecting in the background so it recovers by itself.
 * - "worker": retries forever (BullMQ workers need `maxRetriesPerRequest:
 *   null`); a worker rides out a Redis restart.
 */
import { Redis, ReplyError, type RedisOptions } from "ioredis";
import { ClientError, ErrorCodes } from "../errors/index.js";

export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379";
export const DEFAULT_QUEUE = "sandqueue";
/** BullMQ key prefix; producer and worker must agree on it. */
export const DEFAULT_PREFIX = "sandq";

/** Queue names workers accept (worker/config.ts has the same rule); BullMQ itself refuses '' and ':'. */
const QUEUE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
export const QUEUE_NAME_ACCEPTS = "letters, digits and . _ - (starting with a letter or digit, at most 100 characters)";

/** Why a queue name is refused, or null. */
export function queueNameProblem(name: string): string | null {
  return QUEUE_NAME.test(name) ? null : `expected a queue name: ${QUEUE_NAME_ACCEPTS}`;
}

export type ConnectionMode = "producer" | "worker";

/** Reconnect backoff: fast at first, capped at 2 s. */
const retryStrategy = (times: number): number => Math.min(50 * 2 ** Math.min(times, 6), 2000);

/**
 * How long a producer command may wait for its reply: a Redis that accepts
 * connections but stops answering (paused, stuck in a script, a network
 * black hole) fails calls with SANDQ_ERR_REDIS_UNAVAILABLE instead of
 * hanging them. Generous, so a large addBulk still fits.
 */
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

export function redisOptions(mode: ConnectionMode, commandTimeoutMs = DEFAULT_COMMAND_TIMEOUT_MS): RedisOptions {
  if (mode === "producer") {
    return {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: 2000,
      // Producer connections run no blocking commands (the client's event
      // stream reader has a worker-mode connection of its own).
      commandTimeout: commandTimeoutMs,
      retryStrategy,
    };
  }
  return { maxRetriesPerRequest: null, enableOfflineQueue: true, retryStrategy };
}

export function createRedis(url: string, mode: ConnectionMode, commandTimeoutMs?: number): Redis {
  const client = new Redis(url, redisOptions(mode, commandTimeoutMs));
  // Connection errors are reported through the calls that fail; an unhandled
  // 'error' event would otherwise crash the process.
  client.on("error", () => {});
  return client;
}

/** Connects a lazy producer connection, failing within `timeoutMs`. */
export async function connectOrFail(client: Redis, url: string, timeoutMs = 2000): Promise<void> {
  if (client.status === "ready") return;
  try {
    if (client.status === "wait") client.connect().catch(() => {});
    await new Promise<void>((resolve, reject) => {
      // The last connection error says why (refused, unknown host, TLS...).
      let lastError = "";
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no answer within ${timeoutMs} ms${lastError && ` (${lastError})`}`));
      }, timeoutMs);
      const onReady = (): void => {
        cleanup();
        resolve();
      };
      const onError = (err: Error): void => {
        lastError = err.message;
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        client.off("ready", onReady);
        client.off("error", onError);
      };
      client.on("error", onError);
      if (client.status === "ready") onReady();
      else client.on("ready", onReady);
    });
  } catch (err) {
    throw redisUnavailable(url, err);
  }
}

/**
 * Fails fast (SANDQ_ERR_REDIS_UNAVAILABLE) when Redis does not answer: for
 * one-shot commands that would otherwise start an in-process worker, whose
 * connections wait for Redis forever.
 */
export async function assertRedisReachable(url: string, timeoutMs = 2000): Promise<void> {
  await withProducerConnection(url, async () => undefined, timeoutMs);
}

/** Runs `fn` on a fresh producer connection (failing fast when Redis does not answer), then closes it. */
export async function withProducerConnection<T>(url: string, fn: (client: Redis) => Promise<T>, timeoutMs = 2000): Promise<T> {
  const client = createRedis(url, "producer");
  try {
    await connectOrFail(client, url, timeoutMs);
    return await fn(client);
  } finally {
    client.disconnect();
  }
}

export function redisUnavailable(url: string, cause: unknown): ClientError {
  const why = cause instanceof Error ? cause.message : String(cause);
  return new ClientError(ErrorCodes.REDIS_UNAVAILABLE, `Redis at ${redactUrl(url)} is unavailable: ${why}`, {
    retryable: true,
    cause,
  });
}

/** ioredis's rejection when a command outlives `commandTimeout`. */
const COMMAND_TIMED_OUT = "Command timed out";

/** Never print a Redis password. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparseable url)";
  }
}

/**
 * True for errors that mean "Redis is not reachable right now", judged from
 * the connection's state (never from message text): a server reply error is
 * Redis answering, anything while the connection is not ready or its socket
 * is not writable (the close is noticed a moment after the server goes) is
 * the connection failing.
 */
export function isConnectionError(err: unknown, client: Redis): boolean {
  if (err instanceof ReplyError) return false;
  if (err instanceof Error && err.message === COMMAND_TIMED_OUT) return true;
  if (client.status !== "ready") return true;
  if ((client as unknown as { stream?: { writable?: boolean } }).stream?.writable === false) return true;
  const code = (err as { code?: string } | null)?.code;
  return code === "ECONNREFUSED" || code === "ECONNRESET" || code === "ETIMEDOUT" || code === "EPIPE";
}
