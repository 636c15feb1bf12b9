/**
 * Errors as RFC 9457 problem details (`application/problem+json`). Every
 * body carries the stable `code` (docs/ERRORS.md), `retryable`, and, when
 * fields are at fault, `errors: [{path, message}]` with the field path as
 * the spec validation names it (`limits.timeoutMs`, `jobs[3].files["a"]`).
 * The HTTP status follows from the code alone: one table, here.
 */
import { ErrorCodes, isSandqueueError, type ErrorCode, type SandqueueError } from "../errors/index.js";

export const PROBLEM_CONTENT_TYPE = "application/problem+json";

const STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCodes.REQUEST_INVALID]: 400,
  [ErrorCodes.CONFIG_INVALID]: 400,
  [ErrorCodes.UNAUTHORIZED]: 401,
  [ErrorCodes.FORBIDDEN]: 403,
  [ErrorCodes.NOT_FOUND]: 404,
  [ErrorCodes.JOB_NOT_FOUND]: 404,
  [ErrorCodes.SNAPSHOT_NOT_FOUND]: 404,
  [ErrorCodes.JOB_CANCELLED]: 410,
  [ErrorCodes.BODY_TOO_LARGE]: 413,
  [ErrorCodes.SPEC_TOO_LARGE]: 413,
  [ErrorCodes.UNSUPPORTED_MEDIA_TYPE]: 415,
  [ErrorCodes.SPEC_INVALID]: 422,
  [ErrorCodes.LIMIT_ABOVE_MAX]: 422,
  [ErrorCodes.CALLBACK_REFUSED]: 422,
  [ErrorCodes.RATE_LIMITED]: 429,
  [ErrorCodes.ACTIVE_JOBS_LIMIT]: 429,
  [ErrorCodes.REDIS_UNAVAILABLE]: 503,
  [ErrorCodes.SNAPSHOT_STORE]: 503,
};

const TITLE: Partial<Record<ErrorCode, string>> = {
  [ErrorCodes.REQUEST_INVALID]: "Malformed request",
  [ErrorCodes.UNAUTHORIZED]: "Missing or invalid API key",
  [ErrorCodes.FORBIDDEN]: "Not allowed for this API key",
  [ErrorCodes.NOT_FOUND]: "No such route",
  [ErrorCodes.JOB_NOT_FOUND]: "No such job",
  [ErrorCodes.SNAPSHOT_NOT_FOUND]: "No such snapshot",
  [ErrorCodes.JOB_CANCELLED]: "Job cancelled",
  [ErrorCodes.BODY_TOO_LARGE]: "Request body too large",
  [ErrorCodes.SPEC_TOO_LARGE]: "Job spec too large",
  [ErrorCodes.UNSUPPORTED_MEDIA_TYPE]: "Expected application/json",
  [ErrorCodes.SPEC_INVALID]: "Invalid job spec",
  [ErrorCodes.LIMIT_ABOVE_MAX]: "Limit above the maximum",
  [ErrorCodes.CALLBACK_REFUSED]: "Callback URL refused",
  [ErrorCodes.RATE_LIMITED]: "Rate limit exceeded",
  [ErrorCodes.ACTIVE_JOBS_LIMIT]: "Too many active jobs",
  [ErrorCodes.REDIS_UNAVAILABLE]: "Queue unavailable",
  [ErrorCodes.SNAPSHOT_STORE]: "Snapshot store unavailable",
  [ErrorCodes.INTERNAL]: "Internal error",
};

export interface FieldIssue {
  path: string;
  message: string;
}

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  retryable: boolean;
  instance?: string;
  errors?: FieldIssue[];
}

export function statusFor(code: string): number {
  return STATUS[code as ErrorCode] ?? 500;
}

export function problemFor(err: SandqueueError, instance?: string): Problem {
  const status = statusFor(err.code);
  const issues = err.details?.issues;
  const problem: Problem = {
    type: `urn:sandqueue:error:${err.code}`,
    title: TITLE[err.code] ?? err.code,
    status,
    // A 500 is a bug: its message may say more about the server than a caller needs.
    detail: status === 500 && !isSandqueueError(err.cause) && err.code === ErrorCodes.INTERNAL ? "internal error (logged)" : err.message,
    code: err.code,
    retryable: err.retryable || status === 429 || status === 503,
  };
  if (instance !== undefined) problem.instance = instance;
  if (Array.isArray(issues)) problem.errors = issues as FieldIssue[];
  return problem;
}

/** The issues of an error with every path under `base` (`jobs[3]`). */
export function prefixIssues(err: SandqueueError, base: string): FieldIssue[] {
  const issues = (err.details?.issues as FieldIssue[] | undefined) ?? [{ path: "", message: err.message }];
  const join = (p: string): string => (p === "(spec)" || p === "" ? base : p.startsWith("[") ? `${base}${p}` : `${base}.${p}`);
  return issues.map((i) => ({ path: join(i.path), message: i.message }));
}
