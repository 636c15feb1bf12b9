/**
 * @superserve/sdk errors as sandqueue's. The SDK maps statuses to classes
 * (mapApiError); here each class becomes one code and one retry decision.
 * Messages are the service's own plus what was being done; the SDK never
 * puts the API key or an access token in them.
 */
import {
  AuthenticationError,
  ConflictError,
  NotFoundError,
  RateLimitError,
  SandboxError,
  ServerError,
  TimeoutError,
  ValidationError,
} from "@superserve/sdk";
import { ErrorCodes, ProviderError, isSandqueueError } from "../../errors/index.js";

/** The SDK does not surface Retry-After for calls it does not retry itself (POSTs): this is our wait then. */
export const DEFAULT_RATE_LIMIT_WAIT_MS = 2_000;

export function isRetryableSdkError(err: unknown): boolean {
  if (err instanceof AuthenticationError || err instanceof ValidationError || err instanceof NotFoundError) return false;
  if (err instanceof RateLimitError || err instanceof ServerError || err instanceof TimeoutError || err instanceof ConflictError) return true;
  // No status: a network failure (the SDK wraps fetch's TypeError).
  return err instanceof SandboxError && err.statusCode === undefined;
}

/**
 * `op` says what was being done ("create sandbox from superserve/base").
 * `notFound` decides what a 404 means there (a gone sandbox, a missing template).
 */
export function translateSdkError(err: unknown, op: string, notFound?: () => ProviderError): ProviderError {
  if (isSandqueueError(err)) return err as ProviderError;
  const message = err instanceof Error ? err.message : String(err);
  const status = err instanceof SandboxError && err.statusCode !== undefined ? ` (HTTP ${err.statusCode})` : "";
  const text = `superserve: ${op}: ${message}${status}`;
  if (err instanceof AuthenticationError) {
    return new ProviderError(ErrorCodes.PROVIDER_CREDENTIALS, `${text}; check SANDQUEUE_SUPERSERVE_API_KEY`, { retryable: false, cause: err });
  }
  if (err instanceof RateLimitError) {
    return new ProviderError(ErrorCodes.PROVIDER_RATE_LIMITED, text, { retryable: true, retryAfterMs: DEFAULT_RATE_LIMIT_WAIT_MS, cause: err });
  }
  if (err instanceof NotFoundError && notFound) return notFound();
  if (err instanceof ValidationError) return new ProviderError(ErrorCodes.PROVIDER_FAILED, text, { retryable: false, cause: err });
  if (isRetryableSdkError(err)) return new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, text, { retryable: true, cause: err });
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, text, { retryable: true, cause: err });
}
