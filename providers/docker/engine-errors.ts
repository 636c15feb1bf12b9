/**
 * The one place where container-engine failures become ProviderErrors.
 * Callers say what they were doing (`op`, and `image` when one is involved);
 * the code and `retryable` come from the status or socket error alone.
 */
import { ErrorCodes, ProviderError, isSandqueueError, type SandqueueError } from "../../errors/index.js";
import { EngineHttpError } from "./engine-client.js";

export interface EngineErrorContext {
  op: string;
  image?: string;
  /** Where the engine was expected (DOCKER_HOST), for the message. */
  endpoint?: string;
}

const UNREACHABLE = new Set(["ECONNREFUSED", "ENOENT", "ECONNRESET", "EPIPE", "EHOSTUNREACH", "ETIMEDOUT", "EACCES"]);

export function imageNotFound(image: string, cause?: unknown): ProviderError {
  return new ProviderError(
    ErrorCodes.IMAGE_NOT_FOUND,
    `image "${image}" is not in the container engine; build it with: sandqueue image build ${image}`,
    { retryable: false, cause, details: { image } },
  );
}

export function translateEngineError(err: unknown, ctx: EngineErrorContext): SandqueueError {
  if (isSandqueueError(err)) return err;
  if (err instanceof EngineHttpError) {
    if (
      ctx.image !== undefined &&
      err.status === 404 &&
      /image|no such|not known|not found/i.test(err.engineMessage) &&
      !/container/i.test(err.engineMessage)
    ) {
      return imageNotFound(ctx.image, err);
    }
    // 5xx and 409 (conflicts, container busy) can pass; 4xx are our own bugs.
    const retryable = err.status >= 500 || err.status === 409;
    return new ProviderError(ErrorCodes.PROVIDER_FAILED, `container engine: ${ctx.op}: ${err.message}`, {
      retryable,
      cause: err,
      details: { status: err.status, op: ctx.op },
    });
  }
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code !== undefined && UNREACHABLE.has(code)) {
    return new ProviderError(
      ErrorCodes.PROVIDER_UNAVAILABLE,
      `container engine unreachable at ${ctx.endpoint ?? "DOCKER_HOST"} (${code}) during ${ctx.op}; ` +
        `start it (scripts/setup.d/podman.sh) or set DOCKER_HOST`,
      { retryable: true, cause: err, details: { errno: code, op: ctx.op } },
    );
  }
  const message = err instanceof Error ? err.message : String(err);
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `container engine: ${ctx.op}: ${message}`, {
    retryable: true,
    cause: err,
    details: { op: ctx.op },
  });
}
