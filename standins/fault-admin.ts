/**
 * `POST /standin/faults` (arm one fault: 201 {pending}) and
 * `DELETE /standin/faults` (disarm all: 204), as the e2b, northflank and
 * superserve stand-ins serve them. A fault that does not parse is the
 * service's own 400 (`refuse`).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { sendJson } from "./http-server.js";

export interface FaultRoutes<Spec> {
  faults: { add(spec: Spec): unknown; clear(): void; readonly pending: number };
  parse(v: unknown): Spec | string;
  /** The request's JSON body, as the service reads it. */
  body(): Promise<unknown>;
  /** The service's error for a bad fault (the message names the field). */
  refuse(message: string): Error;
}

/** Serves the request when it is one of the fault routes; false when it is not. */
export async function serveFaultRoutes<Spec>(req: IncomingMessage, res: ServerResponse, pathname: string, o: FaultRoutes<Spec>): Promise<boolean> {
  if (pathname !== "/standin/faults") return false;
  if (req.method === "POST") {
    const f = o.parse(await o.body());
    if (typeof f === "string") throw o.refuse(f);
    o.faults.add(f);
    sendJson(res, 201, { pending: o.faults.pending });
    return true;
  }
  if (req.method === "DELETE") {
    o.faults.clear();
    res.writeHead(204).end();
    return true;
  }
  return false;
}
