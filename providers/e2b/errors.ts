/**
 * e2b SDK errors as sandqueue's. The SDK maps control-plane statuses to
 * classes (401 AuthenticationError, 429 RateLimitError, 503
 * ServiceBusyError, any other status a SandboxError carrying statusCode) and
 * envd's Connect codes to the same classes; a network failure is fetch's
 * TypeError. Here each becomes one code and one retry decision. The SDK
 * never puts the API key or the envd token in a message.
 */
import { AuthenticationError, InvalidArgumentError, NotFoundError, RateLimitError, SandboxError, ServiceBusyError, TimeoutError } from "e2b";
import { ErrorCodes, ProviderError, isSandqueueError } from "../../errors/index.js";

/** The SDK retries a 429 itself only when the answer carries Retry-After and it fits its request timeout: past that, this is our wait. */
export const DEFAULT_RATE_LIMIT_WAIT_MS = 2_000;

function statusOf(err: unknown): number | undefined {
  return err instanceof SandboxError ? (err as SandboxError & { statusCode?: number }).statusCode : undefined;
}

/** 401, and the 403 the SDK leaves as a plain SandboxError: the key is refused. */
export function isCredentialError(err: unknown): boolean {
  return err instanceof AuthenticationError || statusOf(err) === 403;
}

export function isRetryableSdkError(err: unknown): boolean {
  if (isCredentialError(err) || err instanceof InvalidArgumentError || err instanceof NotFoundError) return false;
  if (err instanceof RateLimitError || err instanceof ServiceBusyError || err instanceof TimeoutError) return true;
  const status = statusOf(err);
  if (status !== undefined) return status >= 500 || status === 409;
  // fetch's own failures (connection refused or reset) and its timeouts.
  return err instanceof TypeError || (err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError"));
}

/**
 * `op` says what was being done ("create sandbox from template base").
 * `notFound` decides what a 404 means there (a gone sandbox, a missing template).
 */
export function translateSdkError(err: unknown, op: string, notFound?: () => ProviderError): ProviderError {
  if (isSandqueueError(err)) return err as ProviderError;
  const message = err instanceof Error ? err.message : String(err);
  const status = statusOf(err);
  const text = `e2b: ${op}: ${message}${status !== undefined && !message.startsWith(`${status}:`) ? ` (HTTP ${status})` : ""}`;
  if (isCredentialError(err)) {
    return new ProviderError(ErrorCodes.PROVIDER_CREDENTIALS, `${text}; check SANDQUEUE_E2B_API_KEY`, { retryable: false, cause: err });
  }
  if (err instanceof RateLimitError || status === 429) {
    return new ProviderError(ErrorCodes.PROVIDER_RATE_LIMITED, text, { retryable: true, retryAfterMs: DEFAULT_RATE_LIMIT_WAIT_MS, cause: err });
  }
  if (notFound && (err instanceof NotFoundError || status === 404)) return notFound();
  if (isRetryableSdkError(err)) return new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, text, { retryable: true, cause: err });
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, text, { retryable: status === undefined || status >= 500, cause: err });
}
