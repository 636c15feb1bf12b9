/**
 * The one error model of sandqueue.
 *
 * Every error the project raises on purpose is a SandqueueError with a stable
 * `code` (documented in docs/ERRORS.md; a unit test keeps the two in step) and
 * a `retryable` flag. The worker decides "retry with backoff" versus "end the
 * job now" from `retryable` alone; nothing depends on message text.
 *
 * This module imports nothing, so producer/, worker/ and providers/ can all
 * depend on it without breaking the one-way dependency rule.
 */

export const ErrorCodes = {
  // configuration (worker / CLI start-up)
  CONFIG_INVALID: "SANDQ_ERR_CONFIG_INVALID",
  REDIS_POLICY: "SANDQ_ERR_REDIS_POLICY",
  // job spec (producer side, and re-checked by the worker)
  SPEC_INVALID: "SANDQ_ERR_SPEC_INVALID",
  SPEC_TOO_LARGE: "SANDQ_ERR_SPEC_TOO_LARGE",
  LIMIT_ABOVE_MAX: "SANDQ_ERR_LIMIT_ABOVE_MAX",
  // producer client
  REDIS_UNAVAILABLE: "SANDQ_ERR_REDIS_UNAVAILABLE",
  RESULT_TIMEOUT: "SANDQ_ERR_RESULT_TIMEOUT",
  JOB_NOT_FOUND: "SANDQ_ERR_JOB_NOT_FOUND",
  JOB_CANCELLED: "SANDQ_ERR_JOB_CANCELLED",
  WORKER_LOST: "SANDQ_ERR_WORKER_LOST",
  // providers
  IMAGE_NOT_FOUND: "SANDQ_ERR_IMAGE_NOT_FOUND",
  PROVIDER_UNAVAILABLE: "SANDQ_ERR_PROVIDER_UNAVAILABLE",
  PROVIDER_FAILED: "SANDQ_ERR_PROVIDER_FAILED",
  CGROUP_UNAVAILABLE: "SANDQ_ERR_CGROUP_UNAVAILABLE",
  SANDBOX_RELEASED: "SANDQ_ERR_SANDBOX_RELEASED",
  SANDBOX_LOST: "SANDQ_ERR_SANDBOX_LOST",
  PROVIDER_RATE_LIMITED: "SANDQ_ERR_PROVIDER_RATE_LIMITED",
  PROVIDER_CREDENTIALS: "SANDQ_ERR_PROVIDER_CREDENTIALS",
  CAPABILITY_UNSUPPORTED: "SANDQ_ERR_CAPABILITY_UNSUPPORTED",
  // workspace archives and snapshots
  SNAPSHOT_NOT_FOUND: "SANDQ_ERR_SNAPSHOT_NOT_FOUND",
  SNAPSHOT_STORE: "SANDQ_ERR_SNAPSHOT_STORE",
  TAR_ABSOLUTE_PATH: "SANDQ_ERR_TAR_ABSOLUTE_PATH",
  TAR_PARENT_PATH: "SANDQ_ERR_TAR_PARENT_PATH",
  TAR_THROUGH_SYMLINK: "SANDQ_ERR_TAR_THROUGH_SYMLINK",
  TAR_HARDLINK: "SANDQ_ERR_TAR_HARDLINK",
  TAR_SPECIAL_FILE: "SANDQ_ERR_TAR_SPECIAL_FILE",
  TAR_SETID: "SANDQ_ERR_TAR_SETID",
  TAR_SIZE_MISMATCH: "SANDQ_ERR_TAR_SIZE_MISMATCH",
  TAR_TOO_LARGE: "SANDQ_ERR_TAR_TOO_LARGE",
  TAR_TOO_MANY_ENTRIES: "SANDQ_ERR_TAR_TOO_MANY_ENTRIES",
  TAR_PATH_TOO_DEEP: "SANDQ_ERR_TAR_PATH_TOO_DEEP",
  TAR_PATH_TOO_LONG: "SANDQ_ERR_TAR_PATH_TOO_LONG",
  TAR_DUPLICATE: "SANDQ_ERR_TAR_DUPLICATE",
  TAR_CORRUPT: "SANDQ_ERR_TAR_CORRUPT",
  WORKSPACE_LIMIT: "SANDQ_ERR_WORKSPACE_LIMIT",
  // secrets
  SECRET_NOT_FOUND: "SANDQ_ERR_SECRET_NOT_FOUND",
  SECRET_IN_WORKSPACE: "SANDQ_ERR_SECRET_IN_WORKSPACE",
  // HTTP API (sandqueue api): refused requests and webhook delivery
  REQUEST_INVALID: "SANDQ_ERR_REQUEST_INVALID",
  UNSUPPORTED_MEDIA_TYPE: "SANDQ_ERR_UNSUPPORTED_MEDIA_TYPE",
  BODY_TOO_LARGE: "SANDQ_ERR_BODY_TOO_LARGE",
  NOT_FOUND: "SANDQ_ERR_NOT_FOUND",
  UNAUTHORIZED: "SANDQ_ERR_UNAUTHORIZED",
  FORBIDDEN: "SANDQ_ERR_FORBIDDEN",
  RATE_LIMITED: "SANDQ_ERR_RATE_LIMITED",
  ACTIVE_JOBS_LIMIT: "SANDQ_ERR_ACTIVE_JOBS_LIMIT",
  CALLBACK_REFUSED: "SANDQ_ERR_CALLBACK_REFUSED",
  WEBHOOK_DELIVERY: "SANDQ_ERR_WEBHOOK_DELIVERY",
  // catch-all for bugs: a non-SandqueueError that reached the pipeline
  INTERNAL: "SANDQ_ERR_INTERNAL",
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export interface SandqueueErrorOptions {
  /** Whether trying again later may succeed (infrastructure fault). */
  retryable?: boolean;
  cause?: unknown;
  /** Small, secret-free, JSON-safe facts for callers (field paths, sizes). */
  details?: Record<string, unknown>;
  /** The backend asked us to wait this long before trying again (Retry-After). */
  retryAfterMs?: number;
}

export class SandqueueError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, opts: SandqueueErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.details = opts.details;
    this.retryAfterMs = opts.retryAfterMs;
  }

  toJSON(): { code: ErrorCode; message: string; retryable: boolean } {
    return { code: this.code, message: this.message, retryable: this.retryable };
  }
}

/** Bad configuration: the program stops at start-up. */
export class ConfigError extends SandqueueError {}
/** A job spec that can never run as written. */
export class SpecError extends SandqueueError {}
/** A sandbox backend failed (retryable unless the cause is permanent). */
export class ProviderError extends SandqueueError {}
/** A workspace archive or snapshot store problem. */
export class SnapshotError extends SandqueueError {}
/** A secret could not be resolved. */
export class SecretError extends SandqueueError {}
/** Producer-side failures: Redis down, timeouts, unknown jobs. */
export class ClientError extends SandqueueError {}
/** A request the HTTP API refuses (authentication, quotas, malformed requests) or a webhook it could not deliver. */
export class ApiError extends SandqueueError {}

export function isSandqueueError(err: unknown): err is SandqueueError {
  return err instanceof SandqueueError;
}

/** Wraps anything thrown into a SandqueueError (unknown errors are INTERNAL and retryable). */
export function toSandqueueError(err: unknown): SandqueueError {
  if (err instanceof SandqueueError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new SandqueueError(ErrorCodes.INTERNAL, message, { retryable: true, cause: err });
}

export { withTimeout } from "./timeout.js";
