/**
 * A put archive read whole on the worker, for services that take a file
 * rather than a stream: every entry is validated (validateTar) before a
 * byte goes out, and the caller's abort stops the read.
 */
import type { Readable } from "node:stream";
import { destroyOnAbort, throwIfTransferAborted } from "../abort.js";
import type { ArchiveLimits } from "./index.js";
import { validateTar } from "./pack.js";

/** The validated tar's bytes; fails with the SANDQ_ERR_TAR_* error of the first bad entry, or transferAborted. */
export async function readValidatedTar(tar: Readable, limits: ArchiveLimits, what: string, signal: AbortSignal | undefined): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of destroyOnAbort(validateTar(destroyOnAbort(tar, what, signal), limits), what, signal)) chunks.push(c as Buffer);
  throwIfTransferAborted(what, signal);
  return Buffer.concat(chunks);
}
