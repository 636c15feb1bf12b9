/**
 * Faults the remote stand-ins (microsandbox, provisioner) inject on request:
 * the next N matching requests fail with an HTTP status (5xx bursts, 429
 * with Retry-After, 401/403), are answered late, or (exec) lose their
 * sandbox part-way: it is deleted out from under the running command.
 * Set in-process (`standin.faults.add`) or over HTTP
 * (`POST /standin/faults`, see standins/README.md).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { readBody, sendJson } from "../http-server.js";
import { FaultTable as Faults, nonNegativeNumber, optional, parseFaultEnvelope, statusIn, type FaultRules } from "../fault-table.js";

export interface FaultMatch {
  /** microsandbox: a JSON-RPC method (`sandbox.command.run`); provisioner: `create`, `get`, `list`, `delete`, `exec`, `upload`, `download`, `ready`. */
  op?: string;
  /** Only requests about this sandbox. */
  sandbox?: string;
}

export type FaultAction =
  | { type: "fail"; code: number; retryAfterSeconds?: number; message?: string }
  | { type: "delay"; ms: number }
  /** (exec) The sandbox is deleted this long after the command starts. */
  | { type: "vanish"; afterMs: number };

export interface FaultSpec {
  match: FaultMatch;
  action: FaultAction;
  /** How many matching requests it applies to. Default 1. */
  count?: number;
}

const FAIL_CODES = [400, 401, 403, 404, 409, 429, 500, 502, 503, 504];
const RULES: FaultRules = {
  match: { op: "string", sandbox: "string" },
  actions: {
    fail: (a) => statusIn(a, FAIL_CODES) ?? optional(a, "retryAfterSeconds", nonNegativeNumber),
    delay: (a) => nonNegativeNumber(a, "ms"),
    vanish: (a) => nonNegativeNumber(a, "afterMs"),
  },
};

/** Checks a fault given as JSON; the message names the field at fault. */
export function parseFault(v: unknown): FaultSpec | string {
  return parseFaultEnvelope<FaultSpec>(v, RULES);
}

export class FaultTable extends Faults<FaultMatch, FaultAction> {
  /** The first fault matching this request (consumed once), if any. */
  take(op: string, sandbox?: string, types: FaultAction["type"][] = ["fail", "delay", "vanish"]): FaultAction | null {
    return this.takeWhere((m) => (m.op === undefined || m.op === op) && (m.sandbox === undefined || m.sandbox === sandbox), types);
  }
}

/** `POST /standin/faults` (one fault or a list, all checked before any is armed), `DELETE /standin/faults`. */
export async function serveFaultAdmin(faults: FaultTable, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method === "DELETE") {
    faults.clear();
    return sendJson(res, 200, { ok: true });
  }
  if (req.method !== "POST") return sendJson(res, 405, { error: "POST or DELETE" });
  let parsed: unknown;
  try {
    parsed = JSON.parse((await readBody(req)).toString("utf8"));
  } catch {
    return sendJson(res, 400, { error: "body: expected JSON" });
  }
  const specs = Array.isArray(parsed) ? parsed : [parsed];
  const checked = specs.map(parseFault);
  const bad = checked.findIndex((c) => typeof c === "string");
  if (bad >= 0) return sendJson(res, 400, { error: `fault ${bad}: ${checked[bad] as string}` });
  for (const c of checked) if (typeof c !== "string") faults.add(c);
  sendJson(res, 200, { ok: true, pending: faults.pending });
}
