/**
 * The one place where Kubernetes API failures become ProviderErrors.
 * The code and `retryable` come from the HTTP status (or socket error)
 * alone; callers say what they were doing. Messages carry the API's own
 * Status message, never request headers (the bearer token).
 */
import { ErrorCodes, ProviderError, isSandqueueError, type SandqueueError } from "../../errors/index.js";

export interface KubeErrorContext {
  op: string;
  /** The API server's URL, for "unreachable" messages. */
  server?: string;
}

/** A client-node ApiException, or anything shaped like one. */
interface ApiFailure {
  code: number;
  body?: unknown;
  headers?: Record<string, string>;
}

export function isApiFailure(err: unknown): err is ApiFailure {
  return typeof err === "object" && err !== null && typeof (err as { code?: unknown }).code === "number" && "body" in err;
}

/** HTTP status of an API failure, else undefined. */
export function statusOf(err: unknown): number | undefined {
  return isApiFailure(err) ? err.code : undefined;
}

/** The metav1.Status message of a failure's body, when it has one. */
export function apiMessage(err: ApiFailure): string {
  let body = err.body;
  if (typeof err.body === "string") {
    try {
      body = JSON.parse(err.body);
    } catch {
      return err.body.slice(0, 500);
    }
  }
  const msg = (body as { message?: unknown } | undefined)?.message;
  return typeof msg === "string" ? msg : `HTTP ${err.code}`;
}

function retryAfterMs(err: ApiFailure): number | undefined {
  const header = Object.entries(err.headers ?? {}).find(([k]) => k.toLowerCase() === "retry-after")?.[1];
  const secs = header === undefined ? NaN : Number(header);
  return Number.isFinite(secs) && secs >= 0 ? secs * 1000 : undefined;
}

const UNREACHABLE = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ECONNRESET", "EPIPE", "EHOSTUNREACH", "ETIMEDOUT", "ENETUNREACH"]);

export function translateKubeError(err: unknown, ctx: KubeErrorContext): SandqueueError {
  if (isSandqueueError(err)) return err;
  if (isApiFailure(err)) {
    const what = `kubernetes API: ${ctx.op}: ${apiMessage(err)} (HTTP ${err.code})`;
    const details = { status: err.code, op: ctx.op };
    if (err.code === 401 || err.code === 403) {
      return new ProviderError(
        ErrorCodes.PROVIDER_CREDENTIALS,
        `${what}; check the worker's kubeconfig or service account and its Role (deploy/kubernetes/worker-rbac.yaml)`,
        { retryable: false, cause: err, details },
      );
    }
    if (err.code === 429) {
      const after = retryAfterMs(err);
      return new ProviderError(ErrorCodes.PROVIDER_RATE_LIMITED, what, {
        retryable: true,
        cause: err,
        details,
        ...(after === undefined ? {} : { retryAfterMs: after }),
      });
    }
    if (err.code >= 500) return new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, what, { retryable: true, cause: err, details });
    // 409 (a conflict, a name taken) may pass; other 4xx are settings or our own bugs.
    return new ProviderError(ErrorCodes.PROVIDER_FAILED, what, { retryable: err.code === 409, cause: err, details });
  }
  const code = (err as NodeJS.ErrnoException | undefined)?.code ?? (err as { cause?: { code?: string } } | undefined)?.cause?.code;
  const message = err instanceof Error ? err.message : String(err);
  if (typeof code === "string" && UNREACHABLE.has(code)) {
    return new ProviderError(
      ErrorCodes.PROVIDER_UNAVAILABLE,
      `kubernetes API unreachable at ${ctx.server ?? "the configured server"} (${code}) during ${ctx.op}`,
      { retryable: true, cause: err, details: { errno: code, op: ctx.op } },
    );
  }
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `kubernetes API: ${ctx.op}: ${message}`, { retryable: true, cause: err, details: { op: ctx.op } });
}
