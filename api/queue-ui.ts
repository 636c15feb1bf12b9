/**
 * The queue UI: bull-board at /ui, read-only, behind an API key created
 * with `--ui` (Bearer, or HTTP Basic with the key as password so a browser
 * can prompt for it).
 *
 * Every sandqueue outcome is a *completed* BullMQ job (the result says how
 * it went), so bull-board alone shows a timed-out job as "Completed". Each
 * job's name is therefore its sandqueue status: `succeeded`, `failed
 * (exit 3)`, `timed_out`, `killed/memory`, `error/SANDQ_ERR_...`, with a
 * mark that makes failures stand out. There is no secret value in Redis to
 * show (specs name secrets; values never leave the worker); inline file
 * contents are summarised to their sizes.
 */
import { createBullBoard } from "@bull-board/api";
import { BullMQAdapter } from "@bull-board/api/bullMQAdapter";
import { FastifyAdapter } from "@bull-board/fastify";
import type { Queue } from "bullmq";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { ApiError, ErrorCodes } from "../errors/index.js";
import { JobResultSchema } from "../producer/job-result.js";
import type { ApiKeyStore } from "./api-keys.js";

export const UI_PATH = "/ui";

interface JobJson {
  name?: string;
  data?: { spec?: { kind?: unknown; submittedBy?: unknown } } | null;
  returnvalue?: unknown;
  failedReason?: string;
  finishedOn?: number | null;
}

/** The label a job shows in the list: its sandqueue status, then kind and sender. */
export function statusLabel(job: JobJson): string {
  const spec = job.data?.spec;
  const kind = typeof spec?.kind === "string" ? spec.kind : (job.name ?? "job");
  const by = typeof spec?.submittedBy === "string" ? ` · by ${spec.submittedBy}` : "";
  if (!job.finishedOn) return `${kind}${by}`;
  const raw = typeof job.returnvalue === "string" ? safeJson(job.returnvalue) : job.returnvalue;
  const parsed = JobResultSchema.safeParse(raw);
  if (!parsed.success) {
    // BullMQ gave up on it (every worker lost): the API reports it as error/WORKER_LOST.
    return job.failedReason ? `✗ error/${ErrorCodes.WORKER_LOST} · ${kind}${by}` : `${kind}${by}`;
  }
  const r = parsed.data;
  const status =
    r.status === "failed" ? `failed (exit ${r.exitCode ?? "?"})` : r.status === "killed" ? `killed/${r.reason ?? "?"}` : r.status === "error" ? `error/${r.error?.code ?? "?"}` : r.status;
  return `${r.status === "succeeded" ? "✓" : "✗"} ${status} · ${kind}${by}`;
}

/** Job data as the UI shows it: inline file contents as their sizes. */
function summariseData(data: unknown): unknown {
  const spec = (data as { spec?: Record<string, unknown> } | null)?.spec;
  if (!spec || typeof spec.files !== "object" || spec.files === null) return data;
  const files = Object.fromEntries(
    Object.entries(spec.files as Record<string, unknown>).map(([p, c]) => [
      p,
      typeof c === "string" ? `<${Buffer.byteLength(c)} bytes>` : `<${Buffer.byteLength(String((c as { base64?: unknown }).base64 ?? ""), "base64")} bytes, base64>`,
    ]),
  );
  return { ...(data as object), spec: { ...spec, files } };
}

function deliveryLabel(job: { data?: { url?: string; jobId?: string } | null; name?: string }): string {
  let host = "?";
  try {
    host = new URL(job.data?.url ?? "").host;
  } catch {
    // shown as ?
  }
  return `${job.name ?? "webhook"} → ${host} (job ${job.data?.jobId ?? "?"})`;
}

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}

/** The API key a UI request carries: Bearer, or Basic with the key as password. */
function tokenOf(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  if (!h) return undefined;
  if (h.startsWith("Bearer ")) return h.slice(7).trim();
  if (h.startsWith("Basic ")) {
    const decoded = Buffer.from(h.slice(6), "base64").toString("utf8");
    const i = decoded.indexOf(":");
    return i >= 0 ? decoded.slice(i + 1) : decoded;
  }
  return h;
}

export interface QueueUiOptions {
  queue: Queue;
  webhooks: Queue;
  keys: ApiKeyStore;
  /** Answers a refused request (problem+json): bull-board's own error handler would turn it into a 500. */
  refuse: (err: unknown, req: FastifyRequest, reply: FastifyReply) => FastifyReply;
}

export async function mountQueueUi(app: FastifyInstance, opts: QueueUiOptions): Promise<void> {
  const server = new FastifyAdapter();
  server.setBasePath(UI_PATH);
  const main = new BullMQAdapter(opts.queue, { readOnlyMode: true, description: "sandqueue jobs, named by their sandqueue status" });
  main.setFormatter("name", statusLabel);
  main.setFormatter("data", summariseData);
  const hooks = new BullMQAdapter(opts.webhooks, { readOnlyMode: true, description: "webhook deliveries; Failed holds the dead letters" });
  hooks.setFormatter("name", deliveryLabel);
  createBullBoard({ queues: [main, hooks], serverAdapter: server, options: { uiConfig: { boardTitle: "sandqueue" } } });

  await app.register(async (scope) => {
    scope.addHook("onRequest", async (req, reply) => {
      try {
        const key = await opts.keys.authenticate(tokenOf(req));
        if (!key.ui) throw new ApiError(ErrorCodes.FORBIDDEN, `API key ${key.name} may not open the queue UI (sandqueue api-key create ... --ui)`);
      } catch (err) {
        return opts.refuse(err, req, reply);
      }
    });
    await scope.register(server.registerPlugin(), { prefix: UI_PATH });
  });
}
