/**
 * Local directory snapshot store (`file:///path`).
 *
 * Layout: <root>/sha256/<hex>.tar for objects, <root>/tmp/ for writes in
 * progress. A put streams into a temp file in the same filesystem, fsyncs
 * it, then renames it to its id (and fsyncs the directory): rename is
 * atomic, so a reader opens either the whole object or nothing, and a crash
 * leaves only a temp file (removed by prune). Hashing, for puts and for the
 * verifying reads, runs on the hash thread (hash-thread.ts). createdAt is the file's mtime; storing existing content again
 * refreshes it so prune does not remove a snapshot that was just produced.
 */
import { randomUUID } from "node:crypto";
import { mkdir, open, readdir, rename, rm, stat, unlink, utimes, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { isSandqueueError } from "../../errors/index.js";
import { BLOCK_SOURCE, type BlockSource, type OffersBlockSource } from "../../providers/archive/block-source.js";
import { ThreadedFileRead, ThreadedHash } from "./hash-thread.js";
import { IdCheck } from "./hashing-streams.js";
import { corruptSnapshot, hexOf, notFound, storeError, type PutResult, type SnapshotInfo, type SnapshotStore, removeSnapshotsOlderThan } from "./store.js";

/** Temp files older than this are abandoned writes (a crashed worker). */
const STALE_TEMP_MS = 3_600_000;
/** Bytes per read(2)/write(2) and per message to the hash thread. */
const IO_CHUNK = 1024 * 1024;
/**
 * With fsync on, a background fdatasync starts whenever this much has been
 * written since the last one: the disk writes while we pack and hash, and
 * the final fsync only has the tail left (the kernel would otherwise start
 * writing back only at the final fsync, or after 30 s).
 */
const SYNC_EVERY = 32 * 1024 * 1024;

const noop = () => {};

async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  for (let off = 0; off < data.length; ) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    off += bytesWritten;
  }
}

/**
 * The sink of a put: gathers the tar's chunks (many are 512-byte headers
 * or small files) into 1 MiB blocks; each full block goes to the hash
 * thread and is written at its offset while the next one fills (one write
 * in flight). Owns nothing: put() opens and closes the file.
 */
class ObjectWriter extends Writable {
  private readonly hash = new ThreadedHash();
  /** Set once the stream has finished: "sha256:<hex>" and the byte count. */
  id = "";
  bytes = 0;
  private block = Buffer.allocUnsafe(IO_CHUNK);
  /** The other block: written while `block` fills, then filled while `block` is written. */
  private spare = Buffer.allocUnsafe(IO_CHUNK);
  private used = 0;
  private written = 0;
  private syncedAt = 0;
  /** The last write; each write starts after the previous one. */
  private tail: Promise<void> = Promise.resolve();
  private syncing: Promise<void> | null = null;
  private syncError: unknown = null;

  constructor(
    private readonly fh: FileHandle,
    private readonly fsync: boolean,
  ) {
    super({ highWaterMark: IO_CHUNK });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.take(chunk).then(() => cb(), cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.finish().then(() => cb(), cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.hash.abandon();
    cb(err);
  }

  /** Resolves once no write or background sync is running any more (for put's cleanup). */
  async settled(): Promise<void> {
    await this.tail.catch(noop);
    await this.syncing?.catch(noop);
  }

  private async take(chunk: Buffer): Promise<void> {
    for (let off = 0; off < chunk.length; ) {
      const n = Math.min(chunk.length - off, IO_CHUNK - this.used);
      chunk.copy(this.block, this.used, off, off + n);
      this.used += n;
      off += n;
      if (this.used === IO_CHUNK) await this.flushBlock();
    }
  }

  private async flushBlock(): Promise<void> {
    const data = this.block.subarray(0, this.used);
    [this.block, this.spare] = [this.spare, this.block];
    this.used = 0;
    const position = this.written;
    this.written += data.length;
    const previous = this.tail;
    this.tail = previous.then(() => writeAll(this.fh, data, position));
    this.tail.catch(noop); // observed by the next flush or by finish()
    await this.hash.update(data); // while the write runs
    await previous; // its block (now this.block) is free again
    if (this.fsync && this.syncing === null && this.written - this.syncedAt >= SYNC_EVERY) {
      this.syncedAt = this.written;
      this.syncing = this.fh.datasync().then(
        () => {
          this.syncing = null;
        },
        (err: unknown) => {
          this.syncError ??= err; // fsync errors are reported once: the put must fail
          this.syncing = null;
        },
      );
    }
  }

  private async finish(): Promise<void> {
    if (this.used > 0) await this.flushBlock();
    await this.tail;
    await this.syncing;
    if (this.syncError !== null) throw this.syncError;
    if (this.fsync) await this.fh.sync(); // the rename must not expose a file whose data is not on disk yet
    this.id = await this.hash.digest();
    this.bytes = this.written;
  }
}

/**
 * An object as a stream, hashed on the hash thread while the consumer works
 * on the same bytes; fails at the end when they do not hash to the id.
 * Consumers that act on the bytes (extractTar) must keep their effects
 * invisible until the stream has ended.
 *
 * It also offers the block path (providers/archive/block-source.ts) to a
 * consumer that claims it before reading: the hash thread then reads the
 * object itself into its shared ring and hashes each block in place while
 * the consumer (extractTar) parses and writes from the same memory: one
 * read(2) per MiB off the main thread, no copy, and the same verification
 * (the end of the blocks comes only once the bytes handed out hashed to
 * the id).
 */
class VerifiedObjectStream extends Readable implements OffersBlockSource {
  /** Created on the first read: a consumer taking the block path never needs it. */
  private check: IdCheck | null = null;
  private position = 0;
  private claimed = false;
  /** The block path's read, once claimed. */
  private fileRead: ThreadedFileRead | null = null;

  constructor(
    private readonly fh: FileHandle,
    private readonly size: number,
    private readonly id: string,
  ) {
    super({ highWaterMark: 2 * IO_CHUNK });
  }

  [BLOCK_SOURCE](): BlockSource | null {
    if (this.claimed || this.check !== null || this.destroyed) return null;
    this.claimed = true;
    const read = (this.fileRead = new ThreadedFileRead(this.fh.fd));
    const id = this.id;
    let closing: Promise<void> | null = null;
    return {
      next: async () => {
        const block = await read.next();
        if (block === null && read.digest !== id) {
          throw corruptSnapshot(id, read.digest);
        }
        return block;
      },
      // The fd is closed (by destroying this stream) only once the thread no longer reads from it.
      close: () => (closing ??= read.close().then(() => void this.destroy())),
    };
  }

  // The stream does not call _read again before the push that ends readBlock.
  override _read(): void {
    if (this.claimed) {
      this.destroy(new Error("snapshot stream: read after its blocks were claimed"));
      return;
    }
    this.check ??= new IdCheck(this.id);
    this.readBlock().catch((err: unknown) => this.destroy(isSandqueueError(err) ? err : storeError(`cannot read snapshot ${this.id}`, err)));
  }

  /** Reads and pushes one block; push is its last step. */
  private async readBlock(): Promise<void> {
    const check = this.check!;
    const want = Math.min(IO_CHUNK, Math.max(this.size - this.position, 64 * 1024));
    const block = Buffer.allocUnsafe(want);
    const { bytesRead } = await this.fh.read(block, 0, want, this.position);
    if (this.destroyed) return;
    if (bytesRead === 0) {
      await check.verify();
      this.push(null);
      return;
    }
    this.position += bytesRead;
    const chunk = block.subarray(0, bytesRead);
    await check.update(chunk);
    if (!this.destroyed) this.push(chunk);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.check?.abandon();
    // The hash thread may still be reading this fd: close it only once the thread has let go.
    const stopped = this.fileRead ? this.fileRead.close() : Promise.resolve();
    stopped
      .then(() => this.fh.close())
      .then(
        () => cb(err),
        () => cb(err),
      );
  }
}

export class FileSnapshotStore implements SnapshotStore {
  private readonly objects: string;
  private readonly tmp: string;
  private ready: Promise<void> | null = null;

  private readonly fsync: boolean;

  /**
   * `fsync: false` skips flushing each object to disk before it is renamed
   * into place: a worker crash still leaves nothing visible, but a kernel
   * crash or power loss may leave an object whose bytes never reached the
   * disk (reads then fail the hash check; storing the content again repairs it).
   */
  constructor(readonly root: string, opts: { fsync?: boolean } = {}) {
    this.fsync = opts.fsync ?? true;
    this.objects = join(root, "sha256");
    this.tmp = join(root, "tmp");
  }

  private init(): Promise<void> {
    this.ready ??= (async () => {
      await mkdir(this.objects, { recursive: true });
      await mkdir(this.tmp, { recursive: true });
    })().catch((err: unknown) => {
      this.ready = null;
      throw storeError(`cannot create the snapshot directory ${this.root}`, err);
    });
    return this.ready;
  }

  private pathOf(id: string): string {
    return join(this.objects, `${hexOf(id)}.tar`);
  }

  async put(tar: Readable, opts: { signal?: AbortSignal } = {}): Promise<PutResult> {
    await this.init();
    const tmpPath = join(this.tmp, `${randomUUID()}.part`);
    let fh: FileHandle | null = null;
    let writer: ObjectWriter | null = null;
    try {
      fh = await open(tmpPath, "wx", 0o644);
      writer = new ObjectWriter(fh, this.fsync);
      await pipeline(tar, writer, opts.signal ? { signal: opts.signal } : {});
      const { id, bytes } = writer;
      await fh.close();
      fh = null;
      // An abort after the last byte (a cancel while the job persisted) still
      // stores nothing; it fails like an abort mid-stream (pipeline's AbortError).
      if (opts.signal?.aborted) throw new DOMException("snapshot write aborted", "AbortError");
      const finalPath = this.pathOf(id);
      const existing = await stat(finalPath).catch(() => null);
      // Same id and same size: the stored object is this content. A size that
      // differs can only be a damaged object (lost writes): replace it.
      if (existing && existing.size === bytes) {
        await unlink(tmpPath);
        const now = new Date();
        await utimes(finalPath, now, now);
      } else {
        await rename(tmpPath, finalPath);
        if (this.fsync) await syncDir(this.objects); // the rename itself must survive a power loss
      }
      return { id, bytes };
    } catch (err) {
      writer?.destroy();
      await writer?.settled();
      await fh?.close().catch(noop);
      await rm(tmpPath, { force: true });
      if (isSandqueueError(err) || (err as Error).name === "AbortError") throw err;
      throw storeError("cannot write a snapshot", err);
    }
  }

  async get(id: string): Promise<Readable> {
    const path = this.pathOf(id);
    let fh: FileHandle;
    try {
      fh = await open(path, "r");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") throw notFound(id);
      throw storeError(`cannot open snapshot ${id}`, err);
    }
    try {
      return new VerifiedObjectStream(fh, (await fh.stat()).size, id);
    } catch (err) {
      await fh.close().catch(noop);
      throw storeError(`cannot open snapshot ${id}`, err);
    }
  }

  async has(id: string): Promise<boolean> {
    return (await stat(this.pathOf(id)).catch(() => null)) !== null;
  }

  async list(): Promise<SnapshotInfo[]> {
    await this.init();
    const out: SnapshotInfo[] = [];
    for (const name of await readdir(this.objects)) {
      const m = /^([0-9a-f]{64})\.tar$/.exec(name);
      if (!m) continue;
      const st = await stat(join(this.objects, name)).catch(() => null);
      if (st) out.push({ id: `sha256:${m[1]}`, bytes: st.size, createdAt: st.mtime });
    }
    return out.sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime() || a.id.localeCompare(b.id));
  }

  async remove(id: string): Promise<boolean> {
    try {
      await unlink(this.pathOf(id));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw storeError(`cannot remove snapshot ${id}`, err);
    }
  }

  async prune(olderThanMs: number): Promise<number> {
    const removed = await removeSnapshotsOlderThan(this, olderThanMs);
    const tempCutoff = Date.now() - Math.max(olderThanMs, STALE_TEMP_MS);
    for (const name of await readdir(this.tmp).catch(() => [] as string[])) {
      const p = join(this.tmp, name);
      const st = await stat(p).catch(() => null);
      if (st && st.mtime.getTime() < tempCutoff) await rm(p, { force: true });
    }
    return removed;
  }

  async close(): Promise<void> {}
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
