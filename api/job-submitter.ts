/**
 * POST /v1/jobs: one spec or `{"jobs": [...]}`, validated whole with the
 * job spec's own schema before anything is enqueued, then added in one
 * round trip (BullMQ addBulk; jobs with a callbackUrl as flows, see below).
 *
 * Job ids start with the key's id (`<keyId>_<uuid>`), so a key reads and
 * cancels only its own jobs without a lookup, and one key's
 * Idempotency-Key never meets another key's.
 *
 * A job with a callbackUrl is added as the child of a delivery job in the
 * webhook queue (a BullMQ flow): BullMQ itself moves the delivery job to
 * waiting, with the child's result, in the same script that completes the
 * child. No completion can be missed, whichever API instance is up.
 */
import { createHash, randomUUID } from "node:crypto";
import { FlowProducer, Queue, type FlowJob } from "bullmq";
import { ApiError, ErrorCodes, SpecError, isSandqueueError } from "../errors/index.js";
import { queuedJobOptions } from "../producer/client.js";
import { idempotencyConflicts, parseJobSpec, type JobSpec } from "../producer/job-spec.js";
import type { QueuedJobData } from "../producer/queue-protocol.js";
import type { ApiKey } from "./api-keys.js";
import { checkCallbackUrl } from "./callback-target.js";
import type { ApiConfig } from "./config.js";
import { applyKeyLimits, type KeyQuotas } from "./key-quotas.js";
import { prefixIssues, type FieldIssue } from "./problem.js";
import { deliveryJobId, type DeliveryData } from "./webhook-queue.js";

/** Most specs one POST may carry. */
export const MAX_BATCH = 10_000;

export type Submission = { single: true; id: string } | { single: false; ids: string[] };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function invalid(issues: FieldIssue[], total: number): SpecError {
  return new SpecError(
    ErrorCodes.SPEC_INVALID,
    total > 1
      ? `${new Set(issues.map((i) => i.path.replace(/^(jobs\[\d+\]).*/, "$1"))).size} of ${total} job specs are invalid; nothing was enqueued: ${issues.map((i) => `${i.path}: ${i.message}`).join("; ")}`
      : `invalid job spec: ${issues.map((i) => `${i.path}: ${i.message}`).join("; ")}`,
    { details: { issues } },
  );
}

export class JobSubmitter {
  private readonly jobOptions = queuedJobOptions();

  constructor(
    private readonly config: ApiConfig,
    private readonly queue: Queue,
    private readonly flows: FlowProducer,
    private readonly webhookQueueName: string,
    private readonly quotas: KeyQuotas,
  ) {}

  /** The specs a body holds, and whether it was a single spec. */
  private specsOf(body: unknown): { single: boolean; inputs: unknown[] } {
    if (isObject(body) && Object.hasOwn(body, "jobs")) {
      const extra = Object.keys(body).filter((k) => k !== "jobs");
      if (extra.length) throw invalid([{ path: "(body)", message: `a batch is {"jobs": [...]} alone; unknown field(s) ${extra.map((k) => `'${k}'`).join(", ")}` }], 1);
      const jobs = body.jobs;
      if (!Array.isArray(jobs) || jobs.length === 0 || jobs.length > MAX_BATCH) {
        throw invalid([{ path: "jobs", message: `expected an array of 1 to ${MAX_BATCH} job specs` }], 1);
      }
      return { single: false, inputs: jobs };
    }
    return { single: true, inputs: [body] };
  }

  async submit(key: ApiKey, body: unknown, idempotencyHeader: string | undefined): Promise<Submission> {
    const { single, inputs } = this.specsOf(body);
    const specs: JobSpec[] = [];
    const issues: FieldIssue[] = [];
    let firstError: SpecError | undefined;
    inputs.forEach((input, i) => {
      const base = single ? "" : `jobs[${i}]`;
      try {
        let spec = parseJobSpec(withIdempotencyKey(input, idempotencyHeader, single ? null : i));
        spec = applyKeyLimits(spec, key, this.config.defaultLimits);
        // The key's name is the job's sender: audit lines and results say who sent it.
        specs.push({ ...spec, submittedBy: key.name });
      } catch (err) {
        if (!isSandqueueError(err)) throw err;
        firstError ??= err;
        issues.push(...(base ? prefixIssues(err, base) : ((err.details?.issues as FieldIssue[] | undefined) ?? [{ path: "(spec)", message: err.message }])));
      }
    });
    if (issues.length) {
      // One kind of fault (a limit, a size) keeps its own code; a mix is SPEC_INVALID.
      if (firstError && inputs.length === 1) throw firstError;
      throw invalid(issues, inputs.length);
    }
    for (const c of idempotencyConflicts(specs)) {
      issues.push({ path: `jobs[${c.index}].idempotencyKey`, message: `${JSON.stringify(c.key)} is also used by jobs[${c.first}] with a different spec (one key is one job)` });
    }
    if (issues.length) throw invalid(issues, inputs.length);
    await this.checkCallbacks(key, specs, single);

    const ids = specs.map((s) => jobIdFor(key, s));
    const fresh = [...new Set(ids)];
    await this.quotas.reserve(key, fresh);
    try {
      await this.add(key, specs, ids);
    } catch (err) {
      await this.quotas.release(key, fresh).catch(() => {});
      throw err;
    }
    return single ? { single: true, id: ids[0]! } : { single: false, ids };
  }

  private async checkCallbacks(key: ApiKey, specs: JobSpec[], single: boolean): Promise<void> {
    const urls = new Map<string, number>();
    specs.forEach((s, i) => {
      if (s.callbackUrl !== undefined && !urls.has(s.callbackUrl)) urls.set(s.callbackUrl, i);
    });
    if (urls.size === 0) return;
    if (!key.callbacks) {
      const path = single ? "callbackUrl" : `jobs[${urls.values().next().value}].callbackUrl`;
      throw new ApiError(ErrorCodes.FORBIDDEN, `${path}: API key ${key.name} may not name a callbackUrl (sandqueue api-key create ... --callbacks)`, {
        details: { issues: [{ path, message: "this API key may not name a callbackUrl" }] },
      });
    }
    for (const [url, i] of urls) {
      try {
        await checkCallbackUrl(url, this.config.callbackAllow);
      } catch (err) {
        if (single || !isSandqueueError(err)) throw err;
        throw new ApiError(err.code, `jobs[${i}].${err.message}`, { details: { issues: prefixIssues(err, `jobs[${i}]`) } });
      }
    }
  }

  private async add(key: ApiKey, specs: JobSpec[], ids: string[]): Promise<void> {
    const plain: Parameters<Queue["addBulk"]>[0] = [];
    const flows: FlowJob[] = [];
    specs.forEach((spec, i) => {
      const id = ids[i]!;
      const data: QueuedJobData = { v: 1, spec };
      if (spec.callbackUrl === undefined) {
        plain.push({ name: spec.kind, data, opts: { ...this.jobOptions, jobId: id } });
        return;
      }
      const delivery: DeliveryData = { jobId: id, url: spec.callbackUrl, keyId: key.id, keyName: key.name, webhookVersion: key.webhookVersion };
      flows.push({
        name: "job.finished",
        queueName: this.webhookQueueName,
        data: delivery,
        opts: {
          jobId: deliveryJobId(id),
          attempts: this.config.webhookAttempts,
          backoff: { type: "exponential", delay: this.config.webhookBackoffMs },
          removeOnComplete: { age: Math.ceil(this.jobOptions.removeOnComplete.age) },
          // Dead letters: kept (and shown) for the retention period after the last try.
          removeOnFail: { age: Math.ceil(this.config.webhookRetentionMs / 1000) },
        },
        // A child BullMQ gives up on (worker lost) still releases its delivery, which reports WORKER_LOST.
        children: [{ name: spec.kind, queueName: this.queue.name, data, opts: { ...this.jobOptions, jobId: id, ignoreDependencyOnFailure: true } }],
      });
    });
    if (plain.length === 1) await this.queue.add(plain[0]!.name, plain[0]!.data, plain[0]!.opts);
    else if (plain.length) await this.queue.addBulk(plain);
    if (flows.length) await this.flows.addBulk(flows);
  }
}

/** The Idempotency-Key header as the spec's idempotencyKey; in a batch, `<header>/<index>` per spec. */
function withIdempotencyKey(input: unknown, header: string | undefined, index: number | null): unknown {
  if (header === undefined || !isObject(input)) return input;
  const key = index === null ? header : `${header}/${index}`;
  if (input.idempotencyKey !== undefined && input.idempotencyKey !== key) {
    throw new SpecError(ErrorCodes.SPEC_INVALID, "idempotencyKey differs from the Idempotency-Key header", {
      details: { issues: [{ path: "idempotencyKey", message: `differs from the Idempotency-Key header (${JSON.stringify(key)}); give one or the other` }] },
    });
  }
  return { ...input, idempotencyKey: key };
}

/** `<keyId>_<uuid>`, or for an idempotency key a stable `<keyId>_idem-<hash>`. */
export function jobIdFor(key: ApiKey, spec: JobSpec): string {
  if (spec.idempotencyKey === undefined) return `${key.id}_${randomUUID()}`;
  return `${key.id}_idem-${createHash("sha256").update(spec.idempotencyKey).digest("hex").slice(0, 40)}`;
}

/** Whether a job id belongs to a key (ids from other keys or the Node client are not its to see). */
export function ownedBy(key: ApiKey, id: string): boolean {
  return id.startsWith(`${key.id}_`);
}
