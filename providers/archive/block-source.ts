/**
 * A tar that its producer can hand out as blocks of memory it reads and
 * verifies itself, instead of as a stream of fresh buffers: the file
 * snapshot store's objects (worker/snapshot/file-store.ts), read and hashed
 * on the hash thread into a shared ring. extractTar takes this path when
 * the stream it is given offers it and nothing has read from it yet; any
 * other consumer reads the same object as an ordinary stream.
 *
 * Declared here (the archive module) so the store can implement it without
 * the archive code depending on the store.
 */
import type { Readable } from "node:stream";

export const BLOCK_SOURCE: unique symbol = Symbol.for("sandqueue.archive.blockSource");

export interface BlockSource {
  /**
   * The next block of the archive, or null after the last one. Null comes
   * only once the producer has verified the whole content (a damaged object
   * rejects instead). A block is valid until the next call.
   */
  next(): Promise<Buffer | null>;
  /** Stops the producer and frees what it holds; idempotent, also after the end. */
  close(): Promise<void>;
}

/** What a stream offering the block path carries: null when it can no longer be read that way. */
export interface OffersBlockSource {
  [BLOCK_SOURCE](): BlockSource | null;
}

/** The stream's block source, if it offers one and has not been read from; the stream then belongs to it. */
export function claimBlockSource(tar: Readable): BlockSource | null {
  const offer = (tar as Partial<OffersBlockSource>)[BLOCK_SOURCE];
  if (typeof offer !== "function") return null;
  if (tar.readableFlowing !== null || tar.readableLength > 0 || tar.destroyed) return null;
  return offer.call(tar);
}
