/**
 * GET /openapi.json: an OpenAPI 3.1 document whose schemas are generated
 * from the zod schemas the API validates with (z.toJSONSchema, JSON Schema
 * 2020-12, OpenAPI 3.1's own dialect), so the document cannot drift from
 * what the server accepts. Refinements that JSON Schema cannot say (file
 * path rules, size caps in bytes) are enforced by the server and named in
 * its problem responses.
 */
import { z } from "zod";
import { JobResultSchema } from "../producer/job-result.js";
import { JobSpecSchema } from "../producer/job-spec.js";
import { MAX_BATCH } from "./job-submitter.js";
import { JOB_STATES } from "./job-view.js";

const PROBLEM = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  code: z.string().regex(/^SANDQ_ERR_[A-Z_]+$/),
  retryable: z.boolean(),
  instance: z.string().optional(),
  errors: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
});

function registry() {
  const r = z.registry<{ id: string; description?: string }>();
  r.add(JobSpecSchema, { id: "JobSpec", description: "A job spec (producer/job-spec.ts). Unknown fields are refused." });
  r.add(JobResultSchema, { id: "JobResult", description: "A job's result, published once by the worker that ran it." });
  r.add(z.strictObject({ jobs: z.array(JobSpecSchema).min(1).max(MAX_BATCH) }), { id: "JobBatch", description: "Several specs, validated whole: one bad spec refuses the batch." });
  r.add(z.object({ id: z.string() }), { id: "Submitted" });
  r.add(z.object({ ids: z.array(z.string()) }), { id: "BatchSubmitted" });
  r.add(z.object({ id: z.string(), state: z.enum(JOB_STATES), result: JobResultSchema.nullable() }), {
    id: "JobView",
    description: "queued, running, retrying (after an infrastructure fault) or finished; result is set once finished.",
  });
  r.add(z.object({ id: z.string(), cancelled: z.boolean() }), { id: "Cancelled", description: "cancelled is false when the job had already finished." });
  r.add(
    z.object({
      deadLetters: z.array(
        z.object({ id: z.string(), jobId: z.string(), url: z.string(), attempts: z.number().int(), error: z.string(), failedAt: z.string().nullable() }),
      ),
    }),
    { id: "DeadLetters" },
  );
  r.add(PROBLEM, { id: "Problem", description: "RFC 9457 problem details with the stable SANDQ_ERR_* code (docs/ERRORS.md) and field paths." });
  return r;
}

function schemas(): Record<string, unknown> {
  const out = z.toJSONSchema(registry(), {
    target: "draft-2020-12",
    io: "input",
    unrepresentable: "any",
    uri: (id) => `#/components/schemas/${id}`,
  }) as { schemas: Record<string, Record<string, unknown>> };
  // Output shapes (results) have no defaults to fill in; input mode only makes defaulted fields optional.
  for (const s of Object.values(out.schemas)) {
    delete s.$schema;
    delete s.$id;
  }
  return out.schemas;
}

const ref = (id: string) => ({ $ref: `#/components/schemas/${id}` });
const json = (schema: unknown) => ({ "application/json": { schema } });
const problem = (description: string) => ({ description, content: { "application/problem+json": { schema: ref("Problem") } } });
const jobId = { name: "id", in: "path", required: true, schema: { type: "string" } };
const WAIT = {
  name: "wait",
  in: "query",
  required: false,
  schema: { type: "string", pattern: "^\\d+(\\.\\d+)?(ms|s|m)?$" },
  description: "Hold the request until the job finishes or this long passes (500ms, 30s; bare numbers are seconds; capped by the server).",
};
const COMMON_ERRORS = { "401": problem("No API key, or an unknown or revoked one."), "429": problem("Over the key's rate; see Retry-After."), "503": problem("Redis unavailable.") };

export function openApiDocument(serverUrl?: string): Record<string, unknown> {
  return {
    openapi: "3.1.0",
    info: {
      title: "sandqueue HTTP API",
      version: "1",
      description: "Enqueue sandboxed shell and python jobs, read their results, cancel them, fetch workspace snapshots. Errors are application/problem+json.",
    },
    ...(serverUrl ? { servers: [{ url: serverUrl }] } : {}),
    security: [{ bearer: [] }],
    paths: {
      "/v1/jobs": {
        post: {
          operationId: "submitJobs",
          summary: "Enqueue one job, or a batch",
          parameters: [
            { name: "Idempotency-Key", in: "header", required: false, schema: { type: "string", minLength: 1, maxLength: 200 }, description: "Sets idempotencyKey (a batch's specs get <key>/<index>)." },
            { ...WAIT, description: "One spec only: also wait for its result (as GET ?wait=), answering 200 with the JobView, or 202 with it when the wait ends first." },
          ],
          requestBody: { required: true, content: json({ oneOf: [ref("JobSpec"), ref("JobBatch")] }) },
          responses: {
            "200": { description: "Enqueued and finished within ?wait=.", content: json(ref("JobView")) },
            "202": { description: "Enqueued (with ?wait=: not finished within it, the JobView).", content: json({ oneOf: [ref("Submitted"), ref("BatchSubmitted"), ref("JobView")] }) },
            "400": problem("Malformed JSON or header."),
            "403": problem("The key may not name a callbackUrl."),
            "413": problem("Body or spec too large."),
            "415": problem("Not application/json."),
            "422": problem("Invalid spec, limit above the key's maximum, or refused callback URL; errors[].path names each field."),
            ...COMMON_ERRORS,
          },
        },
      },
      "/v1/jobs/{id}": {
        get: {
          operationId: "getJob",
          summary: "A job's state and result; ?wait= long-polls",
          parameters: [
            jobId,
            WAIT,
          ],
          responses: { "200": { description: "The job.", content: json(ref("JobView")) }, "404": problem("No such job for this key."), "410": problem("Cancelled while waiting."), ...COMMON_ERRORS },
        },
        delete: {
          operationId: "cancelJob",
          summary: "Cancel a job (a running one ends killed/cancelled)",
          parameters: [jobId],
          responses: { "200": { description: "Cancelled (or already finished).", content: json(ref("Cancelled")) }, "404": problem("No such job for this key."), ...COMMON_ERRORS },
        },
      },
      "/v1/jobs/{id}/events": {
        get: {
          operationId: "jobEvents",
          summary: "Server-Sent Events: `state` events ({id, state}) until one `result` ({id, state: finished, result}) or `cancelled` event",
          parameters: [jobId],
          responses: { "200": { description: "An event stream.", content: { "text/event-stream": { schema: { type: "string" } } } }, "404": problem("No such job for this key."), ...COMMON_ERRORS },
        },
      },
      "/v1/snapshots/{id}": {
        get: {
          operationId: "getSnapshot",
          summary: "A workspace snapshot as a tar, streamed",
          parameters: [{ name: "id", in: "path", required: true, schema: { type: "string", pattern: "^sha256:[0-9a-f]{64}$" } }],
          responses: {
            "200": { description: "The tar.", content: { "application/x-tar": { schema: { type: "string", contentMediaType: "application/x-tar" } } } },
            "404": problem("No such snapshot."),
            ...COMMON_ERRORS,
          },
        },
      },
      "/v1/webhooks/dead": {
        get: {
          operationId: "deadLetters",
          summary: "This key's webhook deliveries that failed every try",
          responses: { "200": { description: "Dead letters, newest first.", content: json(ref("DeadLetters")) }, ...COMMON_ERRORS },
        },
      },
      "/v1/webhooks/dead/{id}/retry": {
        post: {
          operationId: "retryDeadLetter",
          summary: "Try a dead-lettered delivery again (from its first attempt)",
          parameters: [{ name: "id", in: "path", required: true, schema: { type: "string" } }],
          responses: { "202": { description: "Queued again.", content: json({ type: "object", properties: { id: { type: "string" } }, required: ["id"] }) }, "404": problem("No such dead letter for this key."), ...COMMON_ERRORS },
        },
      },
      "/healthz": { get: { operationId: "healthz", security: [], summary: "Liveness", responses: { "200": { description: "ok" } } } },
      "/readyz": { get: { operationId: "readyz", security: [], summary: "Readiness: Redis answers", responses: { "200": { description: "ready" }, "503": { description: "not ready" } } } },
      "/metrics": { get: { operationId: "metrics", security: [], summary: "Prometheus metrics", responses: { "200": { description: "Prometheus text format" } } } },
      "/openapi.json": { get: { operationId: "openapi", security: [], summary: "This document", responses: { "200": { description: "OpenAPI 3.1" } } } },
    },
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer", description: "An API key from `sandqueue api-key create NAME`." } },
      schemas: schemas(),
    },
  };
}
