/**
 * `sandqueue api`: the HTTP server. Stateless apart from Redis, so any
 * number of instances can run beside the workers; each also delivers
 * webhooks from the shared webhook queue.
 */
import { FlowProducer, Job, Queue, type Worker } from "bullmq";
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { Redis } from "ioredis";
import { ApiError, ErrorCodes, isSandqueueError, toSandqueueError, withTimeout, type SandqueueError } from "../errors/index.js";
import { SandqueueClient } from "../producer/client.js";
import { connectOrFail, createRedis, isConnectionError, redisUnavailable } from "../producer/redis.js";
import type { Logger } from "../worker/log.js";
import { openSnapshotStore, type SnapshotStore } from "../worker/snapshot/index.js";
import { ApiKeyStore, KEY_CACHE_MS, apiKeyspace, type ApiKey } from "./api-keys.js";
import { ApiMetrics } from "./api-metrics.js";
import type { ApiConfig } from "./config.js";
import { JobEventHub } from "./job-events.js";
import { JobSubmitter, ownedBy } from "./job-submitter.js";
import { notFound, readJob } from "./job-view.js";
import { KeyQuotas } from "./key-quotas.js";
import { loadMasterSecret } from "./master-secret.js";
import { openApiDocument } from "./openapi.js";
import { PROBLEM_CONTENT_TYPE, problemFor, statusFor } from "./problem.js";
import { mountQueueUi, UI_PATH } from "./queue-ui.js";
import { registerJobRoutes } from "./job-routes.js";
import { deadLetters, startDeliveryWorker, webhookQueueName, type DeliveryData } from "./webhook-queue.js";

declare module "fastify" {
  interface FastifyRequest {
    apiKey: ApiKey | null;
  }
}

export interface ApiServer {
  readonly url: string;
  readonly port: number;
  readonly app: FastifyInstance;
  readonly keys: ApiKeyStore;
  readonly metrics: ApiMetrics;
  /** Idempotent. */
  close(): Promise<void>;
}

/** What route handlers share. */
export interface ApiContext {
  config: ApiConfig;
  redis: Redis;
  queue: Queue;
  webhooks: Queue<DeliveryData>;
  client: SandqueueClient;
  submitter: JobSubmitter;
  hub: JobEventHub;
  metrics: ApiMetrics;
  snapshots: () => SnapshotStore;
  log: Logger;
}

export async function startApiServer(config: ApiConfig, log: Logger): Promise<ApiServer> {
  const masterSecret = loadMasterSecret(config);
  const redis = createRedis(config.redisUrl, "producer");
  await connectOrFail(redis, config.redisUrl);
  const closers: (() => Promise<unknown>)[] = [async () => redis.quit().catch(() => redis.disconnect())];
  const closeAll = async (): Promise<void> => {
    for (const c of closers.splice(0).reverse()) await withTimeout(Promise.resolve().then(c), 2000).catch(() => {});
  };
  try {
    const prefix = config.prefix;
    const queue = new Queue(config.queue, { connection: redis, prefix });
    const webhooks = new Queue<DeliveryData>(webhookQueueName(config.queue), { connection: redis, prefix });
    const flows = new FlowProducer({ connection: redis, prefix });
    queue.on("error", () => {});
    webhooks.on("error", () => {});
    flows.on("error", () => {});
    closers.push(() => queue.close(), () => webhooks.close(), () => flows.close());
    const client = new SandqueueClient({ redisUrl: config.redisUrl, queue: config.queue, prefix });
    closers.push(() => client.close());
    const keys = new ApiKeyStore(redis, prefix, config.queue, KEY_CACHE_MS);
    // Revocations reach every instance at once; the cache's lifetime is only the backstop.
    const changes = createRedis(config.redisUrl, "worker");
    await changes.subscribe(keys.changesChannel);
    changes.on("message", (_channel: string, id: string) => keys.forget(id));
    closers.push(async () => changes.disconnect());
    const quotas = new KeyQuotas(redis, apiKeyspace(prefix, config.queue), `${prefix}:${config.queue}:`);
    const hub = new JobEventHub(redis, config.redisUrl, config.queue, prefix);
    closers.push(() => hub.close());
    const metrics = new ApiMetrics(config.queue, () => webhooks);
    let store: SnapshotStore | undefined;
    closers.push(async () => store?.close());

    let delivery: Worker<DeliveryData> | undefined;
    if (config.webhookConcurrency > 0) {
      const deliveryRedis = createRedis(config.redisUrl, "worker");
      delivery = startDeliveryWorker(webhookQueueName(config.queue), prefix, deliveryRedis, config.webhookConcurrency, {
        masterSecret,
        allow: config.callbackAllow,
        timeoutMs: config.webhookTimeoutMs,
        client,
        webhookVersion: (id) => keys.webhookVersionOf(id),
        onOutcome: (outcome, seconds) => metrics.delivery(outcome, seconds),
      });
      closers.push(async () => {
        await delivery?.close();
        deliveryRedis.disconnect();
      });
    }

    const ctx: ApiContext = {
      config,
      redis,
      queue,
      webhooks,
      client,
      submitter: new JobSubmitter(config, queue, flows, webhooks.name, quotas),
      hub,
      metrics,
      snapshots: () => (store ??= openSnapshotStore(config.snapshotsUrl, { s3: { env: process.env } })),
      log,
    };
    const app = buildApp(ctx, keys, quotas);
    await mountQueueUi(app, { queue, webhooks, keys, refuse: (err, req, reply) => sendProblem(ctx, err, req, reply) });
    closers.push(() => app.close());
    await app.listen({ port: config.port, host: config.host }).catch((err: NodeJS.ErrnoException) => {
      throw new ApiError(ErrorCodes.CONFIG_INVALID, `cannot listen on ${config.host}:${config.port} (${err.code ?? err.message}); set SANDQUEUE_API_PORT (or --port)`, { cause: err });
    });
    const address = app.server.address();
    const port = typeof address === "object" && address ? address.port : config.port;
    const host = config.host.includes(":") ? `[${config.host}]` : config.host;
    let closing: Promise<void> | undefined;
    return { url: `http://${host}:${port}`, port, app, keys, metrics, close: () => (closing ??= closeAll()) };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

function buildApp(ctx: ApiContext, keys: ApiKeyStore, quotas: KeyQuotas): FastifyInstance {
  const app = Fastify({
    bodyLimit: ctx.config.bodyLimitBytes,
    // parseJobSpec names a __proto__ key in env/files/labels itself; elsewhere it is an unknown field.
    onProtoPoisoning: "ignore",
    onConstructorPoisoning: "ignore",
    // Long-polls and event streams hold requests open; shutdown must not wait for them.
    forceCloseConnections: true,
    requestTimeout: 0,
    keepAliveTimeout: 5000,
    return503OnClosing: true,
    logger: false,
  });
  // Only JSON bodies: anything else is a 415, not a string handed to validation.
  app.removeContentTypeParser("text/plain");
  app.decorateRequest("apiKey", null);

  app.addHook("onRequest", async (req) => {
    if (!req.url.startsWith("/v1/")) return;
    const h = req.headers.authorization;
    const key = await keys.authenticate(h?.startsWith("Bearer ") ? h.slice(7).trim() : h === undefined ? undefined : "");
    ctx.metrics.keySeen(key.name);
    await quotas.takeRequest(key);
    req.apiKey = key;
  });
  app.addHook("onResponse", async (req, reply) => {
    const route = req.routeOptions.url ?? "(unmatched)";
    const waited = (req.query as { wait?: string } | undefined)?.wait !== undefined && route === "/v1/jobs/:id";
    ctx.metrics.request(route.startsWith(UI_PATH) ? UI_PATH : waited ? `${route} (wait)` : route, req.method, reply.statusCode, reply.elapsedTime / 1000);
  });

  app.setErrorHandler((err: FastifyError | SandqueueError, req, reply) => sendProblem(ctx, err, req, reply));
  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(ErrorCodes.NOT_FOUND, `no route ${req.method} ${req.url.split("?")[0]} (the API is described at /openapi.json)`);
    ctx.metrics.refusal(e.code);
    void reply.code(404).type(PROBLEM_CONTENT_TYPE).send(problemFor(e, req.url.split("?")[0]));
  });

  registerJobRoutes(app, ctx);

  app.get("/v1/webhooks/dead", async (req) => ({ deadLetters: await deadLetters(ctx.webhooks, keyOf(req).id) }));
  app.post<{ Params: { id: string } }>("/v1/webhooks/dead/:id/retry", async (req, reply) => {
    const job = await Job.fromId<DeliveryData>(ctx.webhooks, req.params.id);
    if (!job || job.data.keyId !== keyOf(req).id || (await job.getState()) !== "failed") {
      throw new ApiError(ErrorCodes.NOT_FOUND, `no dead-lettered delivery ${req.params.id} for this API key`);
    }
    await job.retry("failed", { resetAttemptsMade: true });
    return reply.code(202).send({ id: job.id });
  });

  const doc = openApiDocument();
  app.get("/openapi.json", async () => doc);
  app.get("/healthz", async (_req, reply) => reply.type("text/plain; charset=utf-8").send("ok\n"));
  app.get("/readyz", async (_req, reply) => {
    const redis = await withTimeout(ctx.redis.ping(), 300).then(
      () => "ok",
      (err: unknown) => (err instanceof Error ? err.message : String(err)),
    );
    return reply.code(redis === "ok" ? 200 : 503).send({ ready: redis === "ok", checks: { redis } });
  });
  app.get("/metrics", async (_req, reply) => reply.type(ctx.metrics.registry.contentType).send(await ctx.metrics.registry.metrics()));
  return app;
}

export function keyOf(req: FastifyRequest): ApiKey {
  if (!req.apiKey) throw new ApiError(ErrorCodes.UNAUTHORIZED, "no API key");
  return req.apiKey;
}

/** A job id the request's key may see, or JOB_NOT_FOUND (another key's job is not there, as far as it knows). */
export function ownJob(req: FastifyRequest, id: string): string {
  if (!ownedBy(keyOf(req), id)) throw notFound(id);
  return id;
}

/** Answers an error as problem+json (the one place errors become HTTP answers). */
function sendProblem(ctx: ApiContext, err: unknown, req: FastifyRequest, reply: FastifyReply): FastifyReply {
  const e = apiErrorOf(err, ctx.redis, ctx.config.redisUrl, req.headers["content-type"]);
  ctx.metrics.refusal(e.code);
  const status = statusFor(e.code);
  if (status >= 500) ctx.log.log("error", "api.error", { method: req.method, route: req.routeOptions.url, code: e.code, error: e.message });
  if (status === 429 || status === 503) reply.header("retry-after", String(Math.max(1, Math.ceil((e.retryAfterMs ?? 1000) / 1000))));
  if (e.code === ErrorCodes.UNAUTHORIZED) {
    reply.header("www-authenticate", req.url.startsWith(UI_PATH) ? 'Basic realm="sandqueue queue UI", charset="UTF-8"' : 'Bearer realm="sandqueue"');
  }
  return reply.code(status).type(PROBLEM_CONTENT_TYPE).send(problemFor(e, req.url.split("?")[0]));
}

/** Any error as a SandqueueError with the code the answer carries. */
function apiErrorOf(err: unknown, redis: Redis, url: string, contentType: string | undefined): SandqueueError {
  if (isSandqueueError(err)) return err;
  const fe = err as FastifyError;
  switch (fe.code) {
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new ApiError(ErrorCodes.UNSUPPORTED_MEDIA_TYPE, `expected Content-Type: application/json (got ${contentType === undefined ? "none" : JSON.stringify(contentType.slice(0, 100))})`);
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new ApiError(ErrorCodes.BODY_TOO_LARGE, "the request body is over the API's body limit (SANDQUEUE_API_BODY_LIMIT)");
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return new ApiError(ErrorCodes.REQUEST_INVALID, "the body is empty; expected a JSON job spec", { details: { issues: [{ path: "(body)", message: "empty" }] } });
    case "FST_ERR_CTP_INVALID_JSON_BODY":
      return new ApiError(ErrorCodes.REQUEST_INVALID, "the body is not valid JSON", { details: { issues: [{ path: "(body)", message: "not valid JSON" }] } });
  }
  if (typeof fe.statusCode === "number" && fe.statusCode >= 400 && fe.statusCode < 500) return new ApiError(ErrorCodes.REQUEST_INVALID, fe.message);
  if (isConnectionError(err, redis)) return redisUnavailable(url, err);
  return toSandqueueError(err);
}

export type { FastifyReply };
