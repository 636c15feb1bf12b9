/**
 * @northflank/js-client errors as sandqueue's. REST calls (made with
 * throwErrorOnHttpErrorCode) throw NorthflankApiCallError with the HTTP
 * status; the exec socket fails with plain Errors whose text is all there is
 * (an upgrade refused says "Unexpected server response: N", a refused token
 * "Command initialization failed: …"). Each becomes one code and one retry
 * decision; the API token never appears in either.
 */
import { NorthflankApiCallError } from "@northflank/js-client";
import { ErrorCodes, ProviderError, isSandqueueError } from "../../errors/index.js";

/** Our wait after a 429: the SDK surfaces no Retry-After. */
export const RATE_LIMIT_WAIT_MS = 2_000;

const CREDENTIALS_TEXT = /unauthori[sz]ed|forbidden|invalid (api )?token|authentication/i;

/** The HTTP status behind an SDK error: the REST error's, or an exec upgrade's refusal. */
export function statusOf(err: unknown): number | undefined {
  if (err instanceof NorthflankApiCallError) return err.status;
  const m = err instanceof Error ? /Unexpected server response: (\d{3})/.exec(err.message) : null;
  return m ? Number(m[1]) : undefined;
}

export function isRetryable(err: unknown): boolean {
  if (isSandqueueError(err)) return (err as ProviderError).retryable;
  const status = statusOf(err);
  if (status !== undefined) return status === 429 || status >= 500;
  // No status: a network failure, a socket closed early, an unreadable answer.
  return !(err instanceof Error && CREDENTIALS_TEXT.test(err.message));
}

/**
 * `op` says what was being done ("create service sq-…"); `notFound` decides
 * what a 404 means there (a gone service, a missing project).
 */
export function translateError(err: unknown, op: string, notFound?: () => ProviderError): ProviderError {
  if (isSandqueueError(err)) return err as ProviderError;
  const message = err instanceof Error ? err.message : String(err);
  const status = statusOf(err);
  const text = `northflank: ${op}: ${message}${status === undefined ? "" : ` (HTTP ${status})`}`;
  if (status === 401 || status === 403 || (status === undefined && CREDENTIALS_TEXT.test(message))) {
    return new ProviderError(ErrorCodes.PROVIDER_CREDENTIALS, `${text}; credentials refused, check SANDQUEUE_NORTHFLANK_API_TOKEN`, { retryable: false, cause: err });
  }
  if (status === 429) return new ProviderError(ErrorCodes.PROVIDER_RATE_LIMITED, text, { retryable: true, retryAfterMs: RATE_LIMIT_WAIT_MS, cause: err });
  if (status === 404 && notFound) return notFound();
  if (status !== undefined && status < 500) return new ProviderError(ErrorCodes.PROVIDER_FAILED, text, { retryable: false, cause: err });
  return new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, text, { retryable: true, cause: err });
}
