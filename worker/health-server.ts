/**
 * The worker's HTTP side: `/metrics` (Prometheus text format), `/healthz`
 * (the process answers) and `/readyz` (Redis answers PING, the provider's
 * check passes, and the worker is running, not draining).
 *
 * Every check has its own short timeout, so each endpoint answers in well
 * under a second even when Redis or the sandbox backend hangs; at most one
 * check of each kind is in flight, so a prober hammering /readyz cannot pile
 * commands onto a connection that is down.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { ConfigError, ErrorCodes, withTimeout } from "../errors/index.js";
import type { SandboxProvider } from "../providers/provider.js";
import type { SandqueueWorker } from "./worker.js";

export interface HealthServerOptions {
  host: string;
  /** 0 picks a free port (tests); `port` on the returned server says which. */
  port: number;
  registry: Registry;
  worker: Pick<SandqueueWorker, "state" | "redis">;
  provider: Pick<SandboxProvider, "check">;
  redisTimeoutMs?: number;
  providerTimeoutMs?: number;
  /** Called when the provider check fails or times out (metrics count it). */
  onProviderCheckFailed?: (err: unknown) => void;
}

export interface HealthServer {
  readonly host: string;
  readonly port: number;
  /** e.g. http://127.0.0.1:9464 */
  readonly url: string;
  /** Idempotent. */
  close(): Promise<void>;
}

export interface Readiness {
  ready: boolean;
  checks: { worker: string; redis: string; provider: string };
}

export async function startHealthServer(opts: HealthServerOptions): Promise<HealthServer> {
  const redisTimeoutMs = opts.redisTimeoutMs ?? 300;
  const providerTimeoutMs = opts.providerTimeoutMs ?? 500;
  // Single flight around the raw call, timeout outside it: while a call
  // hangs, later probes wait on that same call instead of sending another.
  const pingRedis = singleFlight(async () => {
    const redis = opts.worker.redis;
    // The worker's connection queues commands while offline: do not add to it.
    if (!redis || redis.status !== "ready") throw new Error(`connection ${redis?.status ?? "absent"}`);
    const pong = await redis.ping();
    if (pong !== "PONG") throw new Error(`unexpected reply ${String(pong)}`);
  });
  const checkProvider = singleFlight(() => opts.provider.check());

  async function readiness(): Promise<Readiness> {
    const state = opts.worker.state;
    const [redis, provider] = await Promise.all([
      outcome(withTimeout(pingRedis(), redisTimeoutMs)),
      outcome(
        withTimeout(checkProvider(), providerTimeoutMs).catch((err: unknown) => {
          opts.onProviderCheckFailed?.(err);
          throw err;
        }),
      ),
    ]);
    const worker = state === "running" ? "ok" : state;
    return { ready: worker === "ok" && redis === "ok" && provider === "ok", checks: { worker, redis, provider } };
  }

  const server = createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, "text/plain; charset=utf-8", `internal error: ${String(err)}\n`);
      else res.destroy();
    });
  });
  // A slow or stuck client must not hold a socket for long.
  server.requestTimeout = 5000;
  server.headersTimeout = 5000;
  server.keepAliveTimeout = 5000;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("Allow", "GET, HEAD");
      return send(res, 405, "text/plain; charset=utf-8", "method not allowed\n");
    }
    switch (path) {
      case "/metrics":
        return send(res, 200, opts.registry.contentType, await opts.registry.metrics());
      case "/healthz":
        return send(res, 200, "text/plain; charset=utf-8", "ok\n");
      case "/readyz": {
        const r = await readiness();
        return send(res, r.ready ? 200 : 503, "application/json", `${JSON.stringify(r)}\n`);
      }
      default:
        return send(res, 404, "text/plain; charset=utf-8", "not found: try /metrics, /healthz, /readyz\n");
    }
  }

  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      reject(
        err.code === "EADDRINUSE" || err.code === "EACCES" || err.code === "EADDRNOTAVAIL"
          ? new ConfigError(
              ErrorCodes.CONFIG_INVALID,
              `metrics server cannot listen on ${opts.host}:${opts.port} (${err.code}); set SANDQUEUE_METRICS_PORT (or --metrics-port) to a free port, or 0 to disable it`,
              { cause: err },
            )
          : err,
      );
    };
    server.once("error", onError);
    server.listen(opts.port, opts.host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = opts.host.includes(":") ? `[${opts.host}]` : opts.host;

  let closing: Promise<void> | undefined;
  return {
    host: opts.host,
    port,
    url: `http://${urlHost}:${port}`,
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive sockets from a scraper would otherwise hold close() open.
        server.closeAllConnections();
      })),
  };
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { "Content-Type": contentType, "Cache-Control": "no-store", "Content-Length": Buffer.byteLength(body) });
  res.end(res.req.method === "HEAD" ? undefined : body);
}

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/** Concurrent callers share the one call in flight. */
function singleFlight<T>(fn: () => Promise<T>): () => Promise<T> {
  let inflight: Promise<T> | undefined;
  return () =>
    (inflight ??= (async () => {
      try {
        return await fn();
      } finally {
        inflight = undefined;
      }
    })());
}
