/**
 * The job routes: submit, read (with long-poll), stream events, cancel,
 * and fetch snapshots.
 */
import type { FastifyInstance, FastifyReply } from "fastify";
import { ApiError, ErrorCodes, isSandqueueError } from "../errors/index.js";
import type { JobResult } from "../producer/job-result.js";
import { parseDuration } from "../worker/duration.js";
import { hexOf } from "../worker/snapshot/index.js";
import type { JobEvent } from "./job-events.js";
import { readJob, type JobView } from "./job-view.js";
import { keyOf, ownJob, type ApiContext } from "./server.js";

/** An event stream says it is alive this often (proxies close idle connections). */
const SSE_KEEPALIVE_MS = 15_000;
/** How long an event stream may stay open: a day, the result retention. */
const SSE_MAX_MS = 24 * 3600 * 1000;

function requestInvalid(path: string, message: string): ApiError {
  return new ApiError(ErrorCodes.REQUEST_INVALID, `${path}: ${message}`, { details: { issues: [{ path, message }] } });
}

/** The request's `?wait=`, capped by the server's maximum; 0 when absent. */
function waitOf(value: unknown, maxMs: number): number {
  if (value === undefined) return 0;
  const ms = typeof value === "string" ? parseDuration(value, "s") : null;
  if (ms === null) throw requestInvalid("wait", `expected a duration such as 500ms, 30s or 2m (got ${JSON.stringify(value)})`);
  return Math.min(ms, maxMs);
}

function idempotencyOf(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string" || value.length === 0 || value.length > 200) {
    throw requestInvalid("Idempotency-Key", "expected one header of 1 to 200 characters");
  }
  return value;
}

/** A signal that fires when the caller goes away before the answer is sent. */
function callerGone(reply: FastifyReply): { signal: AbortSignal; done(): void } {
  const ac = new AbortController();
  const onClose = (): void => {
    if (!reply.raw.writableFinished) ac.abort();
  };
  reply.raw.once("close", onClose);
  return { signal: ac.signal, done: () => reply.raw.off("close", onClose) };
}

export function registerJobRoutes(app: FastifyInstance, ctx: ApiContext): void {
  app.post<{ Querystring: { wait?: string } }>("/v1/jobs", async (req, reply) => {
    const key = keyOf(req);
    const waitMs = waitOf(req.query.wait, ctx.config.maxWaitMs);
    const submitted = await ctx.submitter.submit(key, req.body, idempotencyOf(req.headers["idempotency-key"]));
    const n = submitted.single ? 1 : submitted.ids.length;
    ctx.metrics.submittedJobs(key.name, n);
    if (ctx.config.logRequests) ctx.log.log("info", "api.jobs_submitted", { key: key.name, jobs: n, ...(submitted.single ? { id: submitted.id } : {}) });
    if (!submitted.single) return reply.code(202).send({ ids: submitted.ids });
    reply.header("location", `/v1/jobs/${submitted.id}`);
    if (waitMs === 0) return reply.code(202).send({ id: submitted.id });
    // Submit and wait in one request: 200 with the result, or 202 with the state when the wait ends first.
    const view = await waitForJob(ctx, submitted.id, waitMs, reply);
    return reply.code(view.state === "finished" ? 200 : 202).send(view);
  });

  app.get<{ Params: { id: string }; Querystring: { wait?: string } }>("/v1/jobs/:id", async (req, reply): Promise<JobView> => {
    const id = ownJob(req, req.params.id);
    const waitMs = waitOf(req.query.wait, ctx.config.maxWaitMs);
    if (waitMs === 0) return readJob(ctx.queue, ctx.client, id);
    // waitForResult looks at the job itself first (JOB_NOT_FOUND, or its result at once).
    return waitForJob(ctx, id, waitMs, reply);
  });

  app.get<{ Params: { id: string } }>("/v1/jobs/:id/events", async (req, reply) => {
    const id = ownJob(req, req.params.id);
    await streamEvents(ctx, id, reply);
  });

  app.delete<{ Params: { id: string } }>("/v1/jobs/:id", async (req) => {
    const id = ownJob(req, req.params.id);
    const cancelled = await ctx.client.cancel(id);
    if (ctx.config.logRequests) ctx.log.log("info", "api.job_cancel", { key: keyOf(req).name, id, cancelled });
    return { id, cancelled };
  });

  app.get<{ Params: { id: string } }>("/v1/snapshots/:id", async (req, reply) => {
    hexOf(req.params.id); // a malformed id is SNAPSHOT_NOT_FOUND, before the store is touched
    const tar = await ctx.snapshots().get(req.params.id);
    return reply.type("application/x-tar").header("content-disposition", `attachment; filename="${req.params.id.replace(":", "-")}.tar"`).send(tar);
  });
}

/** Long-poll: the job's result as soon as it has one, or its state when `waitMs` has passed. */
export async function waitForJob(ctx: ApiContext, id: string, waitMs: number, reply: FastifyReply): Promise<JobView> {
  const gone = callerGone(reply);
  ctx.metrics.held("longpoll", 1);
  try {
    const result = await ctx.client.waitForResult(id, { timeoutMs: waitMs, signal: gone.signal });
    return { id, state: "finished", result };
  } catch (err) {
    if (!isSandqueueError(err) || err.code !== ErrorCodes.RESULT_TIMEOUT) throw err;
    return readJob(ctx.queue, ctx.client, id);
  } finally {
    gone.done();
    ctx.metrics.held("longpoll", -1);
  }
}

function sse(reply: FastifyReply, event: string, data: unknown): void {
  reply.raw.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

/**
 * `state` events ({id, state}) as the job moves, then one `result` event
 * ({id, state: "finished", result}) or `cancelled`, and the stream ends.
 */
async function streamEvents(ctx: ApiContext, id: string, reply: FastifyReply): Promise<void> {
  // Subscribed before the first read; events that land meanwhile are newer than it and applied after.
  const early: JobEvent[] = [];
  let live: ((e: JobEvent) => void) | null = null;
  const unsubscribe = await ctx.hub.subscribe(id, (e) => (live ? live(e) : early.push(e)));
  let first: JobView;
  try {
    first = await readJob(ctx.queue, ctx.client, id);
  } catch (err) {
    unsubscribe();
    throw err;
  }
  reply.hijack();
  reply.raw.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store", connection: "keep-alive", "x-accel-buffering": "no" });
  // Counted by the onResponse hook like any request, when the stream ends.
  ctx.metrics.held("sse", 1);
  const gone = callerGone(reply);
  let last: JobEvent | null = null;
  let ended = false;
  const keepalive = setInterval(() => reply.raw.write(": keep-alive\n\n"), SSE_KEEPALIVE_MS);
  const finish = (): void => {
    if (ended) return;
    ended = true;
    clearInterval(keepalive);
    unsubscribe();
    gone.done();
    ctx.metrics.held("sse", -1);
    reply.raw.end();
  };
  const state = (e: JobEvent): void => {
    if (ended || e === last || e === "finished" || e === "cancelled") return;
    last = e;
    sse(reply, "state", { id, state: e });
  };
  const result = (r: JobResult): void => {
    if (ended) return;
    sse(reply, "result", { id, state: "finished", result: r });
    finish();
  };
  gone.signal.addEventListener("abort", finish, { once: true });
  if (first.result) return result(first.result);
  state(first.state);
  for (const e of early) state(e);
  live = state;
  ctx.client.waitForResult(id, { timeoutMs: SSE_MAX_MS, signal: gone.signal }).then(result, (err: unknown) => {
    if (ended) return;
    if (isSandqueueError(err) && err.code === ErrorCodes.JOB_CANCELLED) sse(reply, "cancelled", { id, state: "cancelled" });
    else sse(reply, "error", { id, code: isSandqueueError(err) ? err.code : ErrorCodes.INTERNAL, message: err instanceof Error ? err.message : String(err) });
    finish();
  });
}
