/**
 * `?watch=true`: a chunked stream of newline-delimited WatchEvents
 * ({"type":"ADDED|MODIFIED|DELETED|ERROR","object":…}). Without a
 * resourceVersion (or with "0") the stream starts with an ADDED per existing
 * object; from a resourceVersion it replays what changed since, or sends an
 * ERROR event with a 410 Expired Status when the history no longer reaches
 * back that far (what a client's reflector handles by listing again). With
 * selectors, an object that starts or stops matching arrives as ADDED or
 * DELETED, as from the real watch cache.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { KubeObject, ObjectStore, StoreEvent } from "./store.js";
import { expired } from "./status.js";
import { apiVersionOf, type ResourceType } from "./resource-type.js";
import { toTable, type IncludeObject } from "./table.js";

export interface WatchRequest {
  type: ResourceType;
  matches: (o: KubeObject) => boolean;
  resourceVersion: string | null;
  timeoutSeconds: number | null;
  table: { version: "v1" | "v1beta1"; include: IncludeObject } | null;
}

export function serveWatch(store: ObjectStore, w: WatchRequest, req: IncomingMessage, res: ServerResponse): void {
  res.writeHead(200, { "Content-Type": "application/json", "Transfer-Encoding": "chunked", "Cache-Control": "no-cache, private" });
  // Headers go out now, as from the API server: a client waits for them before it reads events, and there may be none for a while.
  res.flushHeaders();
  let headersSent = false;
  const render = (o: KubeObject): unknown => {
    if (!w.table) return { ...o, kind: w.type.kind, apiVersion: apiVersionOf(w.type) };
    const t = toTable(w.type, [o], { ...w.table, resourceVersion: o.metadata.resourceVersion, noHeaders: headersSent });
    headersSent = true;
    return t;
  };
  const write = (type: string, object: unknown) => {
    if (!res.writableEnded) res.write(`${JSON.stringify({ type, object })}\n`);
  };
  const deliver = (e: StoreEvent) => {
    if (e.resource !== w.type.gr.resource) return;
    const now = w.matches(e.object);
    const before = e.type === "MODIFIED" && e.previous ? w.matches(e.previous) : now;
    if (e.type === "MODIFIED" && before !== now) write(now ? "ADDED" : "DELETED", render(e.object));
    else if (now) write(e.type, render(e.object));
  };

  let replay: StoreEvent[] = [];
  if (w.resourceVersion === null || w.resourceVersion === "" || w.resourceVersion === "0") {
    for (const o of store.list(w.type.gr.resource).filter(w.matches)) write("ADDED", render(o));
  } else {
    const since = store.eventsSince(Number(w.resourceVersion));
    if (since === "expired" || !/^\d+$/.test(w.resourceVersion)) {
      write("ERROR", expired(`too old resource version: ${w.resourceVersion} (${store.resourceVersion})`));
      res.end();
      return;
    }
    replay = since;
  }
  replay.forEach(deliver);
  // Subscribed in the same tick as the replay: no event can fall between the two.
  const unsubscribe = store.subscribe(deliver);
  const timer = w.timeoutSeconds !== null ? setTimeout(() => res.end(), w.timeoutSeconds * 1000) : null;
  const stop = () => {
    unsubscribe();
    if (timer) clearTimeout(timer);
  };
  req.on("close", stop);
  res.on("close", stop);
  res.on("finish", stop);
}
