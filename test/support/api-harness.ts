/**
 * A real `sandqueue api` server (in-process, real HTTP on 127.0.0.1) for a
 * test queue, keys made through its key store, and cleanup of what the API
 * keeps beside the queue (keys, quotas, the webhook queue).
 */
import { afterAll } from "vitest";
import type { KeyPolicy } from "../../api/api-keys.js";
import { dropApiState } from "../../api/api-keys.js";
import { parseApiConfig, type ApiConfig } from "../../api/config.js";
import { startApiServer, type ApiServer } from "../../api/server.js";
import { webhookQueueName } from "../../api/webhook-queue.js";
import { dropQueue } from "../../producer/drop-queue.js";
import { DEFAULT_PREFIX, withProducerConnection } from "../../producer/redis.js";
import { silentLogger } from "../../worker/log.js";
import { REDIS_URL, tempDir } from "./harness.js";
import { join } from "node:path";

export interface TestApi {
  server: ApiServer;
  url: string;
  config: ApiConfig;
  /** A new key's token (Bearer value). */
  key(name: string, policy?: Partial<KeyPolicy>): Promise<string>;
}

const queuesWithApi = new Set<string>();

afterAll(async () => {
  for (const q of queuesWithApi) {
    await dropQueue(REDIS_URL, webhookQueueName(q), DEFAULT_PREFIX).catch(() => {});
    await withProducerConnection(REDIS_URL, (r) => dropApiState(r, DEFAULT_PREFIX, q)).catch(() => {});
  }
  queuesWithApi.clear();
});

export async function startTestApi(queue: string, overrides: Partial<ApiConfig> = {}): Promise<TestApi> {
  queuesWithApi.add(queue);
  const config = parseApiConfig(
    { REDIS_URL, SANDQUEUE_QUEUE: queue },
    {},
    {
      port: 0,
      host: "127.0.0.1",
      secretFile: join(tempDir("api-secret"), "secret"),
      logRequests: false,
      webhookBackoffMs: 50,
      ...overrides,
    },
  );
  const server = await startApiServer(config, silentLogger);
  return {
    server,
    url: server.url,
    config,
    key: async (name, policy = {}) => (await server.keys.create(name, { callbacks: false, ui: false, ...policy })).token,
  };
}

export async function api(url: string, token: string | null, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body !== undefined ? { "content-type": "application/json" } : {}),
      ...headers,
    },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  // Tests read whatever the API answered.
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, json, text };
}
