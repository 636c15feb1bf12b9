/**
 * Creating a sandbox on a service whose SDK has no idempotent create: every
 * attempt carries one random token in the sandbox's metadata, so a create
 * whose answer was lost (a 5xx, a timeout) is found by that token and
 * adopted instead of made twice, and a create the caller aborted is found
 * and removed. e2b and superserve use it.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { ErrorCodes, type ProviderError } from "../../errors/index.js";
import { acquireAborted } from "../abort.js";

export interface TokenCreate<T> {
  /** For messages ("e2b: acquire aborted"). */
  provider: string;
  /** What the create is, for error messages. */
  op: string;
  /** Further attempts after a retryable failure. */
  retries: number;
  /** How long one attempt may take, ms. */
  timeoutMs: number;
  signal?: AbortSignal | undefined;
  /** One attempt, stopped by `signal` (the caller's, or the attempt's timeout). */
  create(signal: AbortSignal): Promise<T>;
  /** The sandbox carrying this create's token, if the service lists one. */
  findByToken(): Promise<string | undefined>;
  /** Takes over a sandbox found by the token (errors already translated). */
  adopt(id: string): Promise<T>;
  /** Removes whatever carries the token (after an abort); never throws. */
  removeByToken(): Promise<void>;
  isRetryable(err: unknown): boolean;
  /** The SDK's error as ours (a missing template as IMAGE_NOT_FOUND). */
  translate(err: unknown, op: string): ProviderError;
  /** Wait after a 429 that says nothing, ms. */
  rateLimitWaitMs: number;
}

export async function createWithToken<T>(c: TokenCreate<T>): Promise<T> {
  let last: unknown;
  for (let attempt = 0; attempt <= c.retries; attempt++) {
    const timeout = AbortSignal.timeout(c.timeoutMs);
    try {
      return await c.create(c.signal ? AbortSignal.any([c.signal, timeout]) : timeout);
    } catch (err) {
      last = err;
      if (c.signal?.aborted) {
        // An abort may land after the service created it: find it by its token and remove it.
        await c.removeByToken();
        throw acquireAborted(c.signal, c.provider);
      }
      if (!timeout.aborted && !c.isRetryable(err)) throw c.translate(err, c.op);
      const found = await c.findByToken().catch(() => undefined);
      if (found) return await c.adopt(found);
      if (attempt < c.retries) {
        const wait = c.translate(err, c.op).code === ErrorCodes.PROVIDER_RATE_LIMITED ? c.rateLimitWaitMs : 250 * 2 ** attempt;
        await sleep(wait * (0.8 + Math.random() * 0.4), undefined, c.signal ? { signal: c.signal } : {}).catch(() => undefined);
      }
    }
  }
  throw c.translate(last, `${c.op} (after ${c.retries + 1} attempts)`);
}
