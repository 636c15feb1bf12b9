/**
 * metav1.Status: the one shape the Kubernetes API answers failures with
 * (and a few successes: exec's exit status, deletecollection). Built the way
 * k8s.io/apimachinery/pkg/api/errors builds them, so a client's error
 * handling (reason, code, details) works the same against the stand-in.
 * (A cause's Go field `Type` is `reason` on the wire.)
 */

export interface StatusCause {
  reason?: string;
  message?: string;
  field?: string;
}

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  uid?: string;
  causes?: StatusCause[];
  retryAfterSeconds?: number;
}

export interface Status {
  kind: "Status";
  apiVersion: "v1";
  metadata: Record<string, unknown>;
  status: "Success" | "Failure";
  message?: string;
  reason?: string;
  details?: StatusDetails;
  code: number;
}

/** Where a resource lives: `pods` (core) or `networkpolicies.networking.k8s.io`. */
export interface GroupResource {
  group: string;
  resource: string;
}

export function qualified(gr: GroupResource): string {
  return gr.group ? `${gr.resource}.${gr.group}` : gr.resource;
}

export function failure(code: number, reason: string, message: string, details?: StatusDetails): Status {
  return {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason,
    ...(details ? { details } : {}),
    code,
  };
}

export function success(details?: StatusDetails): Status {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Success", ...(details ? { details } : {}), code: 200 };
}

export function isStatus(v: unknown): v is Status {
  return typeof v === "object" && v !== null && (v as { kind?: unknown }).kind === "Status" && "code" in v;
}

const detailsOf = (gr: GroupResource, name: string): StatusDetails => ({
  name,
  ...(gr.group ? { group: gr.group } : {}),
  kind: gr.resource,
});

export function notFound(gr: GroupResource, name: string): Status {
  return failure(404, "NotFound", `${qualified(gr)} "${name}" not found`, detailsOf(gr, name));
}

export function alreadyExists(gr: GroupResource, name: string): Status {
  return failure(409, "AlreadyExists", `${qualified(gr)} "${name}" already exists`, detailsOf(gr, name));
}

export function conflict(gr: GroupResource, name: string, why: string): Status {
  return failure(409, "Conflict", `Operation cannot be fulfilled on ${qualified(gr)} "${name}": ${why}`, detailsOf(gr, name));
}

/** 422: `Kind "name" is invalid: field: Invalid value: …` with one cause per field error. */
export function invalid(kind: string, group: string, name: string, causes: StatusCause[]): Status {
  const text = causes.map((c) => `${c.field}: ${c.message}`);
  const joined = text.length === 1 ? text[0] : `[${text.join(", ")}]`;
  return failure(422, "Invalid", `${kind} "${name}" is invalid: ${joined}`, {
    name,
    ...(group ? { group } : {}),
    kind,
    causes,
  });
}

export function badRequest(message: string): Status {
  return failure(400, "BadRequest", message);
}

export function methodNotAllowed(): Status {
  return failure(405, "MethodNotAllowed", "the server does not allow this method on the requested resource");
}

/** The API's answer for a path it does not serve (also what makes kubectl try an older endpoint). */
export function pathNotFound(): Status {
  return failure(404, "NotFound", "the server could not find the requested resource", {});
}

export function unauthorized(): Status {
  return failure(401, "Unauthorized", "Unauthorized");
}

export function forbidden(gr: GroupResource, name: string, why: string): Status {
  return failure(403, "Forbidden", `${qualified(gr)} "${name}" is forbidden: ${why}`, detailsOf(gr, name));
}

/** 410 for a watch or list from a resourceVersion the server no longer holds. */
export function expired(message: string): Status {
  return failure(410, "Expired", message);
}

export function gone(message: string): Status {
  return failure(410, "Gone", message);
}

export function tooManyRequests(retryAfterSeconds: number): Status {
  return failure(429, "TooManyRequests", "Too many requests, please try again later.", {
    causes: [{ message: "client rate limit exceeded" }],
    retryAfterSeconds,
  });
}

export function internalError(message: string): Status {
  return failure(500, "InternalError", `Internal error occurred: ${message}`, { causes: [{ message }] });
}

export function serviceUnavailable(message: string): Status {
  return failure(503, "ServiceUnavailable", message);
}
