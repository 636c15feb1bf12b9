/**
 * The stand-in's own endpoints, under /standin/ (a path no Kubernetes API
 * uses), for tests written in any language; same bearer token as the API.
 *
 *   GET    /standin/faults              faults still armed
 *   POST   /standin/faults              arm one: {"match":{…},"action":{…},"count":N}
 *   DELETE /standin/faults              disarm all
 *   POST   /standin/pods/NS/NAME/vanish remove a pod at once, dropping its exec connections
 *   GET    /standin/requests            the last requests served (method, path, verb, code)
 *   GET    /standin/sandboxes           running pods' sandboxes and host leftovers of released ones
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { parseFault, type FaultTable } from "./faults.js";
import type { RequestLogEntry } from "./api.js";
import { badRequest, isStatus, methodNotAllowed, pathNotFound } from "./status.js";
import { parseJson, readBody, sendJson, sendStatus } from "./http-util.js";

export interface AdminContext {
  faults: FaultTable;
  requests: () => RequestLogEntry[];
  vanish: (namespace: string, name: string) => boolean;
  sandboxes: () => Promise<unknown>;
}

export async function handleAdmin(ctx: AdminContext, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  const method = req.method ?? "GET";
  const path = url.pathname.replace(/\/+$/, "");
  if (path === "/standin/faults") {
    if (method === "GET") return sendJson(res, 200, { faults: ctx.faults.list() });
    if (method === "DELETE") {
      ctx.faults.clear();
      return sendJson(res, 200, { faults: [] });
    }
    if (method === "POST") {
      const raw = await readBody(req);
      if (isStatus(raw)) return sendStatus(res, raw);
      const body = parseJson(raw);
      if (isStatus(body)) return sendStatus(res, body);
      const spec = parseFault(body);
      if (typeof spec === "string") return sendStatus(res, badRequest(spec));
      return sendJson(res, 201, ctx.faults.add(spec));
    }
    return sendStatus(res, methodNotAllowed());
  }
  const vanish = /^\/standin\/pods\/([^/]+)\/([^/]+)\/vanish$/.exec(path);
  if (vanish) {
    if (method !== "POST") return sendStatus(res, methodNotAllowed());
    const [ns, name] = [decodeURIComponent(vanish[1]!), decodeURIComponent(vanish[2]!)];
    return ctx.vanish(ns, name) ? sendJson(res, 200, { vanished: `${ns}/${name}` }) : sendStatus(res, pathNotFound());
  }
  if (path === "/standin/requests" && method === "GET") return sendJson(res, 200, { requests: ctx.requests() });
  if (path === "/standin/sandboxes" && method === "GET") return sendJson(res, 200, await ctx.sandboxes());
  sendStatus(res, pathNotFound());
}
