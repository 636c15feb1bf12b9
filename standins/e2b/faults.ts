/**
 * Faults the e2b provider's tests ask of the stand-in: the next N matching
 * requests fail with a status and the service's error body (5xx bursts,
 * 429 with Retry-After, 401/403 for a refused key), are served but answered
 * with a 5xx (the answer lost), are answered late, or (process-start) lose
 * their sandbox mid-run: it is killed under the command, its connections
 * dropped, as when E2B ends a sandbox. Set in-process (`standin.faults.add`)
 * or over HTTP (`POST /standin/faults`, checked by the schema below, whose
 * messages name the field at fault).
 */
import { z } from "zod";
import { FaultTable as Faults } from "../fault-table.js";

/** The API operation a request is, as the stand-in routes it. */
export const E2B_OPS = [
  "create",
  "list",
  "get",
  "kill",
  "timeout",
  "connect",
  "health",
  "files-read",
  "files-write",
  "process-start",
  "process-signal",
  "process-input",
  "process-close-stdin",
] as const;
export type E2bOp = (typeof E2B_OPS)[number];

const FAIL_CODES = [400, 401, 403, 404, 409, 429, 500, 502, 503, 504] as const;
const count = z.number().int().min(0);

const actionSchema = z.discriminatedUnion("type", [
  /** Answer with this status and the service's error body instead of serving the request. */
  z.object({ type: z.literal("fail"), code: z.union(FAIL_CODES.map((c) => z.literal(c))), retryAfterSeconds: count.optional() }),
  /** Serve the request, then answer with this status instead of its result (a gateway lost the answer). */
  z.object({ type: z.literal("lose"), code: z.union([z.literal(500), z.literal(502), z.literal(503), z.literal(504)]) }),
  /** Serve the request this much later. */
  z.object({ type: z.literal("delay"), ms: count }),
  /** (process-start) This long after the command starts, its sandbox is killed under it. */
  z.object({ type: z.literal("vanish"), afterMs: count }),
]);

const faultSchema = z.object({
  /** `sandbox`: a sandbox id. */
  match: z.object({ op: z.enum(E2B_OPS).optional(), sandbox: z.string().optional() }).default({}),
  action: actionSchema,
  /** How many matching requests it applies to. Default 1. */
  count: z.number().int().min(1).default(1),
});

export type FaultAction = z.infer<typeof actionSchema>;
export type FaultSpec = z.input<typeof faultSchema>;

/** Checks a fault given as JSON (the admin endpoint): the fault, or a message naming the field at fault. */
export function parseFault(v: unknown): z.infer<typeof faultSchema> | string {
  const r = faultSchema.safeParse(v);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  return `${issue.path.join(".") || "fault"}: ${issue.message}`;
}

export class FaultTable extends Faults<NonNullable<FaultSpec["match"]>, FaultAction> {
  /** The first fault matching this request whose action is one of `types`, counted as used. */
  take(op: E2bOp, sandbox: string | undefined, types: ReadonlyArray<FaultAction["type"]>): FaultAction | null {
    return this.takeWhere((m) => (m.op === undefined || m.op === op) && (m.sandbox === undefined || m.sandbox === sandbox), types);
  }
}
