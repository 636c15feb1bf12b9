/**
 * Aborting archive transfers (Sandbox.putArchive/getArchive), shared by the
 * providers. The worker classifies an interrupted job by its own signal,
 * never by the error a provider throws, so this error only has to stop the
 * transfer and say what was stopped.
 */
import type { Readable } from "node:stream";
import { ErrorCodes, ProviderError } from "../errors/index.js";

export function transferAborted(what: string, signal: AbortSignal): ProviderError {
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `${what} aborted`, { retryable: true, cause: signal.reason });
}

/** Throws transferAborted when `signal` has fired. */
export function throwIfTransferAborted(what: string, signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw transferAborted(what, signal);
}

/**
 * Destroys `stream` with transferAborted when `signal` fires before the
 * stream closes (at once when it has fired already); the listener goes with
 * the stream, so a long-lived job signal does not collect them.
 */
export function destroyOnAbort<T extends Readable>(stream: T, what: string, signal: AbortSignal | undefined): T {
  if (!signal) return stream;
  const onAbort = (): void => void stream.destroy(transferAborted(what, signal));
  if (signal.aborted) {
    onAbort();
    return stream;
  }
  signal.addEventListener("abort", onAbort, { once: true });
  stream.once("close", () => signal.removeEventListener("abort", onAbort));
  return stream;
}

/**
 * Runs the steps of a putArchive, none once the caller's signal has fired.
 * Whatever fails, the caller's tar is destroyed (nothing is left to read
 * it); a failure after the caller's signal fired is reported as
 * transferAborted, whatever step it came from.
 */
export async function guardPut(tar: Readable, what: string, signal: AbortSignal | undefined, steps: () => Promise<void>): Promise<void> {
  try {
    throwIfTransferAborted(what, signal);
    await steps();
  } catch (err) {
    tar.destroy();
    throw abortedOr(err, what, signal);
  }
}

/** transferAborted when the caller's signal fired (the error it caused says less), `err` otherwise. */
export function abortedOr(err: unknown, what: string, signal: AbortSignal | undefined): unknown {
  return signal?.aborted ? transferAborted(what, signal) : err;
}

/** A catch handler of a transfer step: rethrows as abortedOr says. */
export function rethrowAborted(what: string, signal: AbortSignal | undefined): (err: unknown) => never {
  return (err) => {
    throw abortedOr(err, what, signal);
  };
}

/** An acquire stopped by its caller's signal: retryable, the job is classified by the worker's own signal. */
export function acquireAborted(signal: AbortSignal, provider?: string): ProviderError {
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `${provider ? `${provider}: ` : ""}acquire aborted`, { retryable: true, cause: signal.reason });
}

/** Throws acquireAborted when `signal` has fired. */
export function throwIfAcquireAborted(signal: AbortSignal | undefined, provider?: string): void {
  if (signal?.aborted) throw acquireAborted(signal, provider);
}
