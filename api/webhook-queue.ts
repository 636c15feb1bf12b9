/**
 * Webhook delivery: a BullMQ queue of its own (`<queue>.webhooks`), worked
 * by every `sandqueue api` process.
 *
 * The API process delivers, not the sandbox worker: the worker hosts run
 * untrusted code and need neither the signing secrets nor a route to
 * arbitrary URLs; a slow receiver never holds a sandbox slot; and the
 * address policy and secrets live in one place.
 *
 * Each delivery job is the parent of its sandbox job (see
 * job-submitter.ts), released by BullMQ when the sandbox job finishes (or
 * is cancelled). A failed POST is retried with exponential backoff; after
 * the last try the job stays in the webhook queue's failed set, the dead
 * letters, visible in the queue UI, `GET /v1/webhooks/dead`, and the
 * `sandqueue_webhook_dead_letters` gauge, until the retention ends.
 */
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { Job, Queue, Worker } from "bullmq";
import type { Redis } from "ioredis";
import { ApiError, ErrorCodes, isSandqueueError } from "../errors/index.js";
import type { SandqueueClient } from "../producer/client.js";
import { JobResultSchema, type JobResult } from "../producer/job-result.js";
import type { AddressClass } from "./address-policy.js";
import { guardedLookup, literalHostProblem, parseCallbackUrl } from "./callback-target.js";
import { deriveWebhookKey, signedHeaders } from "./webhook-signature.js";

export interface DeliveryData {
  /** The sandbox job this delivery reports. */
  jobId: string;
  url: string;
  keyId: string;
  keyName: string;
  webhookVersion: number;
  /** Set at the first attempt, so every retry sends the same bytes. */
  body?: string;
}

export type DeliveryOutcome = "delivered" | "retried" | "dead";

export function webhookQueueName(queue: string): string {
  return `${queue}.webhooks`;
}

export function deliveryJobId(jobId: string): string {
  return `cb_${jobId}`;
}

/** The event a receiver gets: the same `{id, state, result}` as GET /v1/jobs/{id}. */
export interface WebhookEvent {
  type: "job.finished" | "job.cancelled";
  timestamp: string;
  data: { id: string; state: "finished" | "cancelled"; result: JobResult | null };
}

export interface DeliveryOptions {
  masterSecret: string;
  allow: readonly AddressClass[];
  timeoutMs: number;
  /** Reads a finished sandbox job's result (also the WORKER_LOST result BullMQ's failures become). */
  client: SandqueueClient;
  /** The key's current secret version (a rotation applies to deliveries still pending); null once revoked. */
  webhookVersion: (keyId: string) => Promise<number | null>;
  onOutcome?: (outcome: DeliveryOutcome, seconds: number) => void;
}

/** The event for a released delivery job: its child's result, or a cancellation. */
async function eventFor(job: Job<DeliveryData>, client: SandqueueClient): Promise<WebhookEvent> {
  const values = Object.values(await job.getChildrenValues()) as unknown[];
  let result: JobResult | null = null;
  for (const v of values) {
    const parsed = JobResultSchema.safeParse(typeof v === "string" ? JSON.parse(v) : v);
    if (parsed.success) result = parsed.data;
  }
  if (!result) {
    try {
      result = await client.getResult(job.data.jobId);
    } catch (err) {
      if (!isSandqueueError(err) || err.code !== ErrorCodes.JOB_NOT_FOUND) throw err;
    }
  }
  const timestamp = new Date().toISOString();
  if (!result) return { type: "job.cancelled", timestamp, data: { id: job.data.jobId, state: "cancelled", result: null } };
  return { type: "job.finished", timestamp, data: { id: job.data.jobId, state: "finished", result } };
}

/** POSTs `body` to `url` through the address policy; resolves with the status code. */
function post(url: URL, body: string, headers: Record<string, string>, allow: readonly AddressClass[], timeoutMs: number): Promise<number> {
  const literal = literalHostProblem(url, allow);
  if (literal) return Promise.reject(new Error(`callback target refused: ${literal}`));
  const request = url.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: "POST",
        headers: { ...headers, "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), "user-agent": "sandqueue-webhooks" },
        lookup: guardedLookup(allow) as never,
        timeout: timeoutMs,
      },
      (res: IncomingMessage) => {
        // The answer's body is not used: drain it, and stop at a sane size.
        let seen = 0;
        res.on("data", (c: Buffer) => {
          seen += c.length;
          if (seen > 64 * 1024) res.destroy();
        });
        res.on("end", () => resolve(res.statusCode ?? 0));
        res.on("close", () => resolve(res.statusCode ?? 0));
        res.on("error", () => resolve(res.statusCode ?? 0));
      },
    );
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}

/** One delivery attempt: throws WEBHOOK_DELIVERY (retried by BullMQ) unless the receiver answered 2xx. */
export async function deliver(job: Job<DeliveryData>, opts: DeliveryOptions): Promise<{ status: number }> {
  let body = job.data.body;
  if (body === undefined) {
    body = JSON.stringify(await eventFor(job, opts.client));
    await job.updateData({ ...job.data, body });
  }
  const version = (await opts.webhookVersion(job.data.keyId)) ?? job.data.webhookVersion;
  const key = deriveWebhookKey(opts.masterSecret, job.data.keyId, version);
  const headers = signedHeaders(key, `msg_${job.data.jobId}`, body);
  let status: number;
  try {
    status = await post(parseCallbackUrl(job.data.url), body, { ...headers }, opts.allow, opts.timeoutMs);
  } catch (err) {
    const why = isSandqueueError(err) ? err.message : (err as Error).message;
    throw new ApiError(ErrorCodes.WEBHOOK_DELIVERY, `POST ${job.data.url} failed: ${why}`, { retryable: true });
  }
  if (status < 200 || status > 299) throw new ApiError(ErrorCodes.WEBHOOK_DELIVERY, `POST ${job.data.url} answered ${status}`, { retryable: true });
  return { status };
}

/** Starts delivering from the webhook queue. */
export function startDeliveryWorker(name: string, prefix: string, connection: Redis, concurrency: number, opts: DeliveryOptions): Worker<DeliveryData> {
  const worker = new Worker<DeliveryData>(
    name,
    async (job) => {
      const started = performance.now();
      try {
        const r = await deliver(job, opts);
        opts.onOutcome?.("delivered", (performance.now() - started) / 1000);
        return r;
      } catch (err) {
        const last = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
        opts.onOutcome?.(last ? "dead" : "retried", (performance.now() - started) / 1000);
        throw err;
      }
    },
    { connection, prefix, concurrency, autorun: true },
  );
  worker.on("error", () => {});
  return worker;
}

export interface DeadLetter {
  id: string;
  jobId: string;
  url: string;
  attempts: number;
  error: string;
  failedAt: string | null;
}

/** A key's dead-lettered deliveries, newest first (at most `limit`). */
export async function deadLetters(queue: Queue<DeliveryData>, keyId: string | null, limit = 100): Promise<DeadLetter[]> {
  const jobs = await queue.getFailed(0, 999);
  return jobs
    .filter((j) => j && (keyId === null || j.data.keyId === keyId))
    .slice(0, limit)
    .map((j) => ({
      id: j.id as string,
      jobId: j.data.jobId,
      url: j.data.url,
      attempts: j.attemptsMade,
      error: j.failedReason,
      failedAt: j.finishedOn ? new Date(j.finishedOn).toISOString() : null,
    }));
}
