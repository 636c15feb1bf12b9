/**
 * Pass-through streams that hash what flows through them on the shared hash
 * thread (hash-thread.ts), for stores whose bytes arrive as streams (S3):
 * the event loop only copies each chunk into the thread's ring, SHA-256
 * itself (~1 ms per MiB here) runs beside it, as for the file store.
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

/** Passes bytes through and fails at the end if they do not hash to `id` (corrupt storage). */
export class VerifyingPassThrough extends Transform {
  private readonly hash = new ThreadedHash();

  constructor(private readonly id: string) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk).then(() => cb(null, chunk), cb);
  }

  override _flush(cb: TransformCallback): void {
    this.hash.digest().then(
      (got) => {
        if (got === this.id) cb();
        else cb(corruptSnapshot(this.id, got));
      },
      (err: Error) => cb(err),
    );
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.hash.abandon();
    cb(err);
  }
}
