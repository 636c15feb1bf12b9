/**
 * Hashing on the shared hash thread (hash-thread.ts) for bytes that arrive
 * as streams: pass-through streams for the S3 store, and IdCheck, the
 * read-side check against a snapshot's id that the file store's stream path
 * uses too. The event loop only copies each chunk into the thread's ring;
 * SHA-256 itself (~1 ms per MiB here) runs beside it.
 */
import { Transform, type TransformCallback } from "node:stream";
import { ThreadedHash } from "./hash-thread.js";
import { corruptSnapshot } from "./store.js";

/** Hashes the bytes passing through; `digestId()` once the stream has ended. */
export class HashingPassThrough extends Transform {
  private readonly hash = new ThreadedHash();
  private digest: Promise<string> | null = null;

  get bytes(): number {
    return this.hash.bytes;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    // The chunk is passed on only once it is in the ring: backpressure reaches the producer.
    this.hash.update(chunk).then(() => cb(null, chunk), cb);
  }

  // Digested at the end of the input, before a consumer's loop ends and destroys the stream.
  override _flush(cb: TransformCallback): void {
    this.digest = this.hash.digest();
    this.digest.then(() => cb(), cb);
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.hash.abandon(); // no-op once digested
    cb(err);
  }

  /** "sha256:<hex>" of everything that passed through; only after the stream has ended. */
  digestId(): Promise<string> {
    return this.digest ?? Promise.reject(new Error("HashingPassThrough: digestId before the end of the stream"));
  }
}

/** Hashes a stored object's bytes as they are read and checks them against its id at the end. */
export class IdCheck {
  private readonly hash = new ThreadedHash();

  constructor(private readonly id: string) {}

  update(chunk: Buffer): Promise<void> {
    return this.hash.update(chunk);
  }

  /** Rejects with a corrupt-snapshot error unless the bytes passed in hash to the id. */
  async verify(): Promise<void> {
    const got = await this.hash.digest();
    if (got !== this.id) throw corruptSnapshot(this.id, got);
  }

  /** Frees the hash thread's job (no-op once verified). */
  abandon(): void {
    this.hash.abandon();
  }
}

/** Passes bytes through and fails at the end if they do not hash to `id` (corrupt storage). */
export class VerifyingPassThrough extends Transform {
  private readonly check: IdCheck;

  constructor(id: string) {
    super();
    this.check = new IdCheck(id);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.check.update(chunk).then(() => cb(null, chunk), cb);
  }

  override _flush(cb: TransformCallback): void {
    this.check.verify().then(() => cb(), cb);
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.check.abandon();
    cb(err);
  }
}
