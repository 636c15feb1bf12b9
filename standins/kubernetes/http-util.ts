/** Reading requests and writing JSON answers the way the API server frames them. */
import type { IncomingMessage, ServerResponse } from "node:http";
import { failure, badRequest, type Status } from "./status.js";
import { sendJson } from "../http-server.js";

/** The API server's request body cap (3 MiB): above it, 413. */
export const MAX_BODY_BYTES = 3 * 1024 * 1024;

export { sendJson };

export function sendStatus(res: ServerResponse, status: Status): void {
  const headers: Record<string, string> = {};
  const retry = status.details?.retryAfterSeconds;
  if (retry !== undefined) headers["Retry-After"] = String(retry);
  sendJson(res, status.code, status, headers);
}

export async function readBody(req: IncomingMessage): Promise<Buffer | Status> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return failure(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728");
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

export function parseJson(body: Buffer): unknown | Status {
  try {
    return JSON.parse(body.toString("utf8")) as unknown;
  } catch (err) {
    return badRequest(`the object provided is unrecognized (must be of type JSON): ${(err as Error).message}`);
  }
}

/** The media type of a request without parameters (`application/json; charset=utf-8` -> `application/json`). */
export function mediaType(req: IncomingMessage): string {
  return (req.headers["content-type"] ?? "application/json").split(";")[0]!.trim().toLowerCase();
}

/** Which Table version the client asked for (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), if any. */
export function tableVersion(req: IncomingMessage): "v1" | "v1beta1" | null {
  for (const part of (req.headers.accept ?? "").split(",")) {
    const params = new Map(
      part
        .split(";")
        .slice(1)
        .map((p) => p.trim().split("=") as [string, string | undefined]),
    );
    if (params.get("as") === "Table" && params.get("g") === "meta.k8s.io") {
      const v = params.get("v");
      if (v === "v1" || v === "v1beta1") return v;
    }
  }
  return null;
}

/** Query booleans as the API converts them: "true"/"1" and "false"/"0"/"". */
export function queryBool(q: URLSearchParams, name: string): boolean | null {
  const v = q.get(name);
  if (v === null || v === "" || v === "false" || v === "0") return false;
  if (v === "true" || v === "1") return true;
  return null;
}
