/**
 * Local directory snapshot store (`file:///path`).
 *
 * Layout: <root>/sha256/<hex>.tar for objects, <root>/tmp/ for writes in
 * progress. A put streams into a temp file in the same filesystem, fsyncs
 * it, then renames it to its id: rename is atomic, so a reader opens either
 * the whole object or nothing, and a crash leaves only a temp file (removed
 * by prune). createdAt is the file's mtime; storing existing content again
 * refreshes it so prune does not remove a snapshot that was just produced.
 */
import { randomUUID } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, open, readdir, rename, rm, stat, unlink, utimes } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { isSandqueueError } from "../../errors/index.js";
import { HashingPassThrough, VerifyingPassThrough, hexOf, notFound, storeError, type PutResult, type SnapshotInfo, type SnapshotStore, removeSnapshotsOlderThan } from "./store.js";

/** Temp files older than this are abandoned writes (a crashed worker). */
const STALE_TEMP_MS = 3_600_000;

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
    const hasher = new HashingPassThrough();
    try {
      await pipeline(tar, hasher, createWriteStream(tmpPath, { flags: "wx", mode: 0o644, highWaterMark: 1024 * 1024 }), opts.signal ? { signal: opts.signal } : {});
      if (this.fsync) {
        const fh = await open(tmpPath, "r");
        try {
          await fh.sync(); // the rename must not expose a file whose data is not on disk yet
        } finally {
          await fh.close();
        }
      }
      const id = hasher.digestId();
      const finalPath = this.pathOf(id);
      const existing = await stat(finalPath).catch(() => null);
      // Same id and same size: the stored object is this content. A size that
      // differs can only be a damaged object (lost writes): replace it.
      if (existing && existing.size === hasher.bytes) {
        await unlink(tmpPath);
        const now = new Date();
        await utimes(finalPath, now, now);
      } else {
        await rename(tmpPath, finalPath);
      }
      return { id, bytes: hasher.bytes };
    } catch (err) {
      await rm(tmpPath, { force: true });
      if (isSandqueueError(err) || (err as Error).name === "AbortError") throw err;
      throw storeError("cannot write a snapshot", err);
    }
  }

  async get(id: string): Promise<Readable> {
    const path = this.pathOf(id);
    let fh;
    try {
      fh = await open(path, "r");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") throw notFound(id);
      throw storeError(`cannot open snapshot ${id}`, err);
    }
    const src = createReadStream("", { fd: fh, highWaterMark: 1024 * 1024 });
    const verify = new VerifyingPassThrough(id);
    src.on("error", (e) => verify.destroy(e));
    verify.on("close", () => src.destroy());
    return src.pipe(verify);
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
