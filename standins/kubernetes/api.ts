/**
 * The REST side of the stand-in: authentication (the kubeconfig's bearer
 * token), injected faults, then get / list / watch / create / update /
 * patch / delete / deletecollection for every resource type, with the API's
 * status codes and Status bodies. Pod deletion is graceful as on a cluster:
 * a scheduled pod gets a deletionTimestamp and is removed once the kubelet
 * has stopped it; an unscheduled or finished pod, or gracePeriodSeconds=0,
 * goes at once.
 */
import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { KubeObject, ObjectStore } from "./store.js";
import { timestamp } from "./store.js";
import type { Kubelet } from "./kubelet.js";
import type { FaultTable, RequestFacts } from "./faults.js";
import { apiVersionOf, type ResourceType } from "./resource-type.js";
import { routeOf, verbOf, type Route } from "./routes.js";
import {
  alreadyExists,
  badRequest,
  conflict,
  failure,
  forbidden,
  internalError,
  isStatus,
  methodNotAllowed,
  notFound,
  pathNotFound,
  success,
  unauthorized,
  type Status,
} from "./status.js";
import { mediaType, parseJson, queryBool, readBody, sendJson, sendStatus, tableVersion } from "./http-util.js";
import { matchesFields, matchesLabels, parseFieldSelector, parseLabelSelector } from "./selectors.js";
import { toTable, type IncludeObject } from "./table.js";
import { serveWatch } from "./watch.js";
import { applyPatch } from "./patch.js";
import { openApiV2 } from "./openapi.js";
import { isPod, preconditionFailed, type Pod } from "./pods.js";
import { toSandqueueError } from "../../errors/index.js";

export interface ApiContext {
  store: ObjectStore;
  kubelet: Kubelet;
  faults: FaultTable;
  types: readonly ResourceType[];
  /** Bearer token every request but /version and health probes must carry; null: no authentication. */
  token: string | null;
  serverAddress: () => string;
  onRequest: (entry: RequestLogEntry) => void;
}

export interface RequestLogEntry {
  method: string;
  path: string;
  verb: string;
  resource?: string;
  code: number;
  userAgent?: string;
}

type Reply = { code: number; body: unknown } | Status;

const SERVER_FIELDS = ["uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "generation"];
/** generateName's suffix alphabet (k8s.io/apiserver/pkg/storage/names): no vowels, no look-alikes. */
const NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789";
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function generatedName(prefix: string): string {
  const bytes = randomBytes(5);
  return prefix + [...bytes].map((b) => NAME_ALPHABET[b % NAME_ALPHABET.length]).join("");
}

interface DeleteOptions {
  gracePeriodSeconds?: number;
  preconditions?: { uid?: string; resourceVersion?: string };
  dryRun?: string[];
}

export class KubernetesApi {
  constructor(private readonly ctx: ApiContext) {}

  authorized(req: IncomingMessage): boolean {
    return this.ctx.token === null || req.headers.authorization === `Bearer ${this.ctx.token}`;
  }

  /** The route of a request, with authentication and injected faults applied; a Status when refused. */
  async admit(req: IncomingMessage, url: URL): Promise<{ route: Route; facts: RequestFacts } | Status> {
    const route = routeOf(url.pathname, this.ctx.types, this.ctx.serverAddress());
    if (!route) return this.authorized(req) ? pathNotFound() : unauthorized();
    const isPublic = route.kind === "health" || (route.kind === "document" && route.public);
    if (!isPublic && !this.authorized(req)) return unauthorized();
    const facts: RequestFacts =
      route.kind === "resource"
        ? {
            verb: verbOf(req.method ?? "GET", route, queryBool(url.searchParams, "watch") === true),
            resource: route.type.gr.resource,
            namespace: route.namespace,
            name: route.name,
          }
        : { verb: "discovery" };
    if (isPublic) return { route, facts };
    const fault = this.ctx.faults.take(facts, ["fail", "delay"]);
    if (fault?.type === "delay") await sleep(fault.ms);
    if (fault?.type === "fail") return this.faultStatus(fault.code, fault.retryAfterSeconds, fault.message);
    return { route, facts };
  }

  private faultStatus(code: number, retryAfterSeconds: number | undefined, message: string | undefined): Status {
    const reasons: Record<number, string> = {
      400: "BadRequest",
      401: "Unauthorized",
      403: "Forbidden",
      404: "NotFound",
      409: "Conflict",
      410: "Expired",
      422: "Invalid",
      429: "TooManyRequests",
      500: "InternalError",
      503: "ServiceUnavailable",
      504: "Timeout",
    };
    const text = message ?? (code === 429 ? "Too many requests, please try again later." : `injected fault: ${code}`);
    return failure(code, reasons[code] ?? "InternalError", text, retryAfterSeconds === undefined ? undefined : { retryAfterSeconds });
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin");
    let verb = "?";
    let resource: string | undefined;
    res.on("finish", () =>
      this.ctx.onRequest({
        method: req.method ?? "GET",
        path: url.pathname + url.search,
        verb,
        ...(resource ? { resource } : {}),
        code: res.statusCode,
        ...(req.headers["user-agent"] ? { userAgent: req.headers["user-agent"] } : {}),
      }),
    );
    try {
      const admitted = await this.admit(req, url);
      if (isStatus(admitted)) {
        sendStatus(res, admitted);
        return;
      }
      const { route, facts } = admitted;
      verb = facts.verb;
      resource = facts.resource;
      if (route.kind !== "resource") {
        this.serveDocument(route, req, res);
        return;
      }
      const reply = await this.serve(route, verb, req, res, url);
      if (reply === null) return; // streamed (watch)
      if (isStatus(reply)) sendStatus(res, reply);
      else sendJson(res, reply.code, reply.body);
    } catch (err) {
      if (!res.headersSent) sendStatus(res, internalError(toSandqueueError(err).message));
      else res.destroy();
    }
  }

  private serveDocument(route: Route, req: IncomingMessage, res: ServerResponse): void {
    if (route.kind === "health") {
      res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" }).end("ok");
      return;
    }
    if (route.kind === "document") return sendJson(res, 200, route.body);
    if (route.kind === "openapi") {
      const accept = req.headers.accept ?? "";
      if (accept.includes("protobuf")) {
        const body = openApiV2();
        // Go clients parse the reply's media type: the request's `@v1.0` form does not parse, so the API answers octet-stream.
        res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": body.length }).end(body);
        return;
      }
      // JSON readers get the same minimal document's idea: a Pod model only.
      return sendJson(res, 200, { swagger: "2.0", info: { title: "Kubernetes", version: "v1.30.0" }, paths: {}, definitions: {} });
    }
    sendStatus(res, pathNotFound());
  }

  private async serve(route: Route & { kind: "resource" }, verb: string, req: IncomingMessage, res: ServerResponse, url: URL): Promise<Reply | null> {
    const { type, namespace, name, subresource } = route;
    const q = url.searchParams;
    if (subresource === "exec") return badRequest("Upgrade request required");
    if (subresource === "status" && verb !== "get") return methodNotAllowed();
    if (subresource !== undefined && subresource !== "status") return pathNotFound();
    if (type.namespaced && namespace !== undefined && verb !== "get" && verb !== "list" && verb !== "watch") {
      const ns = this.ctx.store.get("namespaces", undefined, namespace);
      if (!ns) return notFound({ group: "", resource: "namespaces" }, namespace);
      if (verb === "create" && ns.metadata.deletionTimestamp) {
        return forbidden(type.gr, "", `unable to create new content in namespace ${namespace} because it is being terminated`);
      }
    }
    switch (verb) {
      case "get":
        return this.get(type, namespace, name!, req, q);
      case "list":
      case "watch":
        return this.list(type, namespace, verb === "watch", req, res, q);
      case "create":
        return this.create(type, namespace, req, q);
      case "update":
      case "patch":
        return this.update(type, namespace, name!, verb, req, q);
      case "delete":
        return this.deleteOne(type, namespace, name!, req, q);
      case "deletecollection":
        return this.deleteCollection(type, namespace, req, q);
      default:
        return methodNotAllowed();
    }
  }

  private withKind(type: ResourceType, o: KubeObject): KubeObject {
    return { ...o, kind: type.kind, apiVersion: apiVersionOf(type) };
  }

  private includeObject(q: URLSearchParams): IncludeObject {
    const v = q.get("includeObject");
    return v === "None" || v === "Object" ? v : "Metadata";
  }

  private get(type: ResourceType, namespace: string | undefined, name: string, req: IncomingMessage, q: URLSearchParams): Reply {
    const o = this.ctx.store.get(type.gr.resource, namespace, name);
    if (!o) return notFound(type.gr, name);
    const table = tableVersion(req);
    if (table) return { code: 200, body: toTable(type, [o], { version: table, include: this.includeObject(q), resourceVersion: o.metadata.resourceVersion }) };
    return { code: 200, body: this.withKind(type, o) };
  }

  private matcher(type: ResourceType, namespace: string | undefined, q: URLSearchParams): ((o: KubeObject) => boolean) | Status {
    const labels = parseLabelSelector(q.get("labelSelector") ?? "");
    if ("error" in labels) return badRequest(labels.error);
    const fieldsByName: Record<string, (o: KubeObject) => string> = {
      "metadata.name": (o) => o.metadata.name,
      ...(type.namespaced ? { "metadata.namespace": (o: KubeObject) => o.metadata.namespace ?? "" } : {}),
      ...type.selectableFields,
    };
    const fields = parseFieldSelector(q.get("fieldSelector") ?? "", new Set(Object.keys(fieldsByName)));
    if ("error" in fields) return badRequest(fields.error);
    return (o) =>
      (namespace === undefined || o.metadata.namespace === namespace) &&
      matchesLabels(labels, o.metadata.labels) &&
      matchesFields(fields, (f) => fieldsByName[f]!(o));
  }

  private list(type: ResourceType, namespace: string | undefined, watch: boolean, req: IncomingMessage, res: ServerResponse, q: URLSearchParams): Reply | null {
    const matches = this.matcher(type, namespace, q);
    if (isStatus(matches)) return matches;
    const table = tableVersion(req);
    if (watch) {
      const timeout = q.get("timeoutSeconds");
      serveWatch(
        this.ctx.store,
        {
          type,
          matches,
          resourceVersion: q.get("resourceVersion"),
          timeoutSeconds: timeout !== null && /^\d+$/.test(timeout) ? Number(timeout) : null,
          table: table ? { version: table, include: this.includeObject(q) } : null,
        },
        req,
        res,
      );
      return null;
    }
    let items = this.ctx.store.list(type.gr.resource, namespace).filter(matches);
    // Pagination: `continue` names the last key served. Unlike etcd, later pages show the current state, not a snapshot.
    const cont = q.get("continue");
    if (cont) {
      let after: string;
      try {
        after = (JSON.parse(Buffer.from(cont, "base64url").toString("utf8")) as { start: string }).start;
      } catch {
        return badRequest(`invalid continue token`);
      }
      items = items.filter((o) => `${o.metadata.namespace ?? ""}/${o.metadata.name}` > after);
    }
    const limit = Number(q.get("limit") ?? "0");
    let continueToken: string | undefined;
    let remaining: number | undefined;
    if (Number.isInteger(limit) && limit > 0 && items.length > limit) {
      const last = items[limit - 1]!;
      remaining = items.length - limit;
      items = items.slice(0, limit);
      continueToken = Buffer.from(JSON.stringify({ v: "meta.k8s.io/v1", rv: Number(this.ctx.store.resourceVersion), start: `${last.metadata.namespace ?? ""}/${last.metadata.name}` })).toString("base64url");
    }
    const resourceVersion = this.ctx.store.resourceVersion;
    if (table) {
      return { code: 200, body: toTable(type, items, { version: table, include: this.includeObject(q), resourceVersion, continueToken }) };
    }
    return {
      code: 200,
      body: {
        kind: type.listKind,
        apiVersion: apiVersionOf(type),
        metadata: { resourceVersion, ...(continueToken ? { continue: continueToken, remainingItemCount: remaining } : {}) },
        items,
      },
    };
  }

  /** A JSON object body with a metadata object (what every write needs), or the API's 400/415. */
  private async objectBody(req: IncomingMessage): Promise<Record<string, unknown> | Status> {
    const type = mediaType(req);
    if (type !== "application/json") {
      return failure(415, "UnsupportedMediaType", `the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf`);
    }
    const raw = await readBody(req);
    if (isStatus(raw)) return raw;
    const body = parseJson(raw);
    if (isStatus(body)) return body;
    if (typeof body !== "object" || body === null || Array.isArray(body)) return badRequest("the object provided is unrecognized (must be of type JSON object)");
    const o = body as Record<string, unknown>;
    o.metadata ??= {};
    if (typeof o.metadata !== "object" || o.metadata === null || Array.isArray(o.metadata)) return badRequest("metadata: expected an object");
    return o;
  }

  private async create(type: ResourceType, namespace: string | undefined, req: IncomingMessage, q: URLSearchParams): Promise<Reply> {
    const body = await this.objectBody(req);
    if (isStatus(body)) return body;
    if (body.kind !== undefined && body.kind !== type.kind) {
      return badRequest(`the API version in the data (${String(body.apiVersion)}) does not match the expected API version (${apiVersionOf(type)})`);
    }
    const meta = body.metadata as Record<string, unknown>;
    if (type.namespaced) {
      if (meta.namespace !== undefined && meta.namespace !== "" && meta.namespace !== namespace) {
        return badRequest("the namespace of the provided object does not match the namespace sent on the request");
      }
      meta.namespace = namespace;
    } else {
      delete meta.namespace;
    }
    for (const f of SERVER_FIELDS) delete meta[f];
    const prefix = meta.generateName;
    if ((meta.name === undefined || meta.name === "") && typeof prefix === "string" && prefix !== "") {
      let name: string;
      do name = generatedName(prefix);
      while (this.ctx.store.get(type.gr.resource, namespace, name));
      meta.name = name;
    }
    const prepared = type.prepareCreate(body);
    if (isStatus(prepared)) return prepared;
    if (this.ctx.store.get(type.gr.resource, namespace, prepared.metadata.name)) return alreadyExists(type.gr, prepared.metadata.name);
    if (q.get("dryRun") === "All") {
      return { code: 201, body: { ...prepared, metadata: { ...prepared.metadata, creationTimestamp: timestamp(), uid: "" } } };
    }
    if (type.kind === "Pod") {
      const slow = this.ctx.faults.take({ verb: "create", resource: "pods", namespace, name: prepared.metadata.name }, ["slowStart"]);
      if (slow?.type === "slowStart") this.ctx.kubelet.delayStart(namespace ?? "", prepared.metadata.name, slow.ms);
    }
    return { code: 201, body: this.withKind(type, this.ctx.store.create(type.gr.resource, prepared)) };
  }

  private async update(type: ResourceType, namespace: string | undefined, name: string, verb: string, req: IncomingMessage, q: URLSearchParams): Promise<Reply> {
    const current = this.ctx.store.get(type.gr.resource, namespace, name);
    let next: Record<string, unknown>;
    if (verb === "patch") {
      if (!current) return notFound(type.gr, name);
      const raw = await readBody(req);
      if (isStatus(raw)) return raw;
      const patch = parseJson(raw);
      if (isStatus(patch)) return patch;
      const patched = applyPatch(mediaType(req), this.withKind(type, current), patch);
      if (isStatus(patched)) return patched;
      next = patched;
    } else {
      const body = await this.objectBody(req);
      if (isStatus(body)) return body;
      if (!current) return notFound(type.gr, name);
      next = body;
    }
    const meta = (typeof next.metadata === "object" && next.metadata !== null ? next.metadata : {}) as Record<string, unknown>;
    next.metadata = meta;
    if (meta.name !== undefined && meta.name !== name) {
      return badRequest(`the name of the object (${String(meta.name)}) does not match the name on the URL (${name})`);
    }
    if (type.namespaced && meta.namespace !== undefined && meta.namespace !== namespace) {
      return badRequest("the namespace of the provided object does not match the namespace sent on the request");
    }
    const rv = meta.resourceVersion;
    if (rv !== undefined && rv !== "" && rv !== current.metadata.resourceVersion) {
      return conflict(type.gr, name, "the object has been modified; please apply your changes to the latest version and try again");
    }
    // The server's own metadata is kept whatever the body says.
    for (const f of SERVER_FIELDS) {
      if (current.metadata[f] === undefined) delete meta[f];
      else meta[f] = current.metadata[f];
    }
    Object.assign(meta, { name, ...(type.namespaced ? { namespace } : {}) });
    const prepared = type.prepareUpdate(current, next);
    if (isStatus(prepared)) return prepared;
    if (q.get("dryRun") === "All") return { code: 200, body: this.withKind(type, prepared) };
    const stored = this.ctx.store.update(type.gr.resource, namespace, name, (o) => {
      if (o.metadata.resourceVersion !== current.metadata.resourceVersion) return false;
      for (const k of Object.keys(o)) delete o[k];
      Object.assign(o, structuredClone(prepared));
    });
    if (!stored) return notFound(type.gr, name);
    if (stored.metadata.resourceVersion === current.metadata.resourceVersion && JSON.stringify(prepared) !== JSON.stringify(current)) {
      return conflict(type.gr, name, "the object has been modified; please apply your changes to the latest version and try again");
    }
    return { code: 200, body: this.withKind(type, stored) };
  }

  private async deleteOptions(req: IncomingMessage, q: URLSearchParams): Promise<DeleteOptions | Status> {
    const raw = await readBody(req);
    if (isStatus(raw)) return raw;
    let opts: DeleteOptions = {};
    if (raw.length > 0) {
      const body = parseJson(raw);
      if (isStatus(body)) return body;
      if (typeof body !== "object" || body === null) return badRequest("DeleteOptions: expected an object");
      opts = body as DeleteOptions;
    }
    const grace = q.get("gracePeriodSeconds");
    if (grace !== null) {
      if (!/^-?\d+$/.test(grace)) return badRequest(`gracePeriodSeconds: invalid value "${grace}"`);
      opts.gracePeriodSeconds = Number(grace);
    }
    if (q.get("dryRun") === "All") opts.dryRun = ["All"];
    if (opts.gracePeriodSeconds !== undefined && !Number.isInteger(opts.gracePeriodSeconds)) return badRequest("gracePeriodSeconds: expected an integer");
    return opts;
  }

  private async deleteOne(type: ResourceType, namespace: string | undefined, name: string, req: IncomingMessage, q: URLSearchParams): Promise<Reply> {
    const opts = await this.deleteOptions(req, q);
    if (isStatus(opts)) return opts;
    return this.remove(type, namespace, name, opts);
  }

  private remove(type: ResourceType, namespace: string | undefined, name: string, opts: DeleteOptions): Reply {
    const current = this.ctx.store.get(type.gr.resource, namespace, name);
    if (!current) return notFound(type.gr, name);
    const pre = opts.preconditions;
    if (pre?.uid !== undefined && pre.uid !== current.metadata.uid) {
      return isPod(current) ? preconditionFailed(current, pre.uid) : conflict(type.gr, name, `Precondition failed: UID in precondition: ${pre.uid}, UID in object meta: ${current.metadata.uid}`);
    }
    if (pre?.resourceVersion !== undefined && pre.resourceVersion !== current.metadata.resourceVersion) {
      return conflict(type.gr, name, `Precondition failed: ResourceVersion in precondition: ${pre.resourceVersion}, ResourceVersion in object meta: ${current.metadata.resourceVersion}`);
    }
    if (opts.dryRun) return { code: 200, body: this.withKind(type, current) };
    if (isPod(current)) return { code: 200, body: this.withKind(type, this.deletePod(current, opts.gracePeriodSeconds)) };
    if (type.kind === "Namespace") return { code: 200, body: this.withKind(type, this.deleteNamespace(current)) };
    this.ctx.store.remove(type.gr.resource, namespace, name);
    return success({ name, ...(type.gr.group ? { group: type.gr.group } : {}), kind: type.gr.resource, uid: current.metadata.uid });
  }

  /** Pods store ReturnDeletedObject: the answer is the pod, terminating or gone. */
  private deletePod(pod: Pod, requestedGrace: number | undefined): KubeObject {
    const { namespace, name } = pod.metadata;
    let grace = requestedGrace ?? pod.spec.terminationGracePeriodSeconds;
    if (grace < 0) grace = 1;
    // Not scheduled, or already finished: nothing to stop, deleted at once (pod strategy's CheckGracefulDelete).
    if (!pod.spec.nodeName || pod.status.phase === "Failed" || pod.status.phase === "Succeeded") grace = 0;
    if (grace === 0) return this.ctx.store.remove("pods", namespace, name) ?? pod;
    const updated = this.ctx.store.update("pods", namespace, name, (o) => {
      const current = o.metadata.deletionGracePeriodSeconds;
      if (o.metadata.deletionTimestamp && current !== undefined && current <= grace) return false;
      o.metadata.deletionTimestamp = timestamp(new Date(Date.now() + grace * 1000));
      o.metadata.deletionGracePeriodSeconds = grace;
    });
    return updated ?? pod;
  }

  /** Namespace deletion: Terminating, its pods and policies removed, then the namespace itself. */
  private deleteNamespace(ns: KubeObject): KubeObject {
    const name = ns.metadata.name;
    const terminating = this.ctx.store.update("namespaces", undefined, name, (o) => {
      if (o.metadata.deletionTimestamp) return false;
      o.metadata.deletionTimestamp = timestamp();
      o.metadata.deletionGracePeriodSeconds = 0;
      o.status = { phase: "Terminating" };
    });
    void Promise.resolve().then(() => {
      for (const t of this.ctx.types.filter((x) => x.namespaced)) {
        for (const o of this.ctx.store.list(t.gr.resource, name)) this.ctx.store.remove(t.gr.resource, name, o.metadata.name);
      }
      this.ctx.store.remove("namespaces", undefined, name);
    });
    return terminating ?? ns;
  }

  private async deleteCollection(type: ResourceType, namespace: string | undefined, req: IncomingMessage, q: URLSearchParams): Promise<Reply> {
    const opts = await this.deleteOptions(req, q);
    if (isStatus(opts)) return opts;
    const matches = this.matcher(type, namespace, q);
    if (isStatus(matches)) return matches;
    const items: unknown[] = [];
    for (const o of this.ctx.store.list(type.gr.resource, namespace).filter(matches)) {
      const r = this.remove(type, o.metadata.namespace, o.metadata.name, { ...opts, preconditions: undefined });
      if (!isStatus(r)) items.push(isPod(o) ? r.body : o);
    }
    return { code: 200, body: { kind: type.listKind, apiVersion: apiVersionOf(type), metadata: { resourceVersion: this.ctx.store.resourceVersion }, items } };
  }
}
