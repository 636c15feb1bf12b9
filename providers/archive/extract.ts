/**
 * extractTar: validate-then-write extraction into a host directory.
 *
 * Choice: entries stream into a fresh staging directory created next to the
 * target (same filesystem, so moving is a rename). Only when the whole
 * archive has passed every rule are the staged entries moved into the
 * target; a rejected or broken archive only ever touched the staging
 * directory, which is removed. The target directory itself is never
 * replaced (it may be bind-mounted into a sandbox); its children are.
 *
 * Merging into a non-empty target is checked before the first move too: a
 * staged path whose parent is an existing symlink in the target is refused
 * (TAR_THROUGH_SYMLINK), and a file where the target has a directory is
 * refused (TAR_DUPLICATE). Symlink targets are never resolved on the host
 * (see entry-rules.ts). The moves themselves are not atomic as a group (a
 * crash half-way leaves some entries moved), which is acceptable for a
 * sandbox workspace that is discarded on failure. The sandbox must not run
 * while extracting.
 *
 * Reading: the one tar reader (tar-reader.ts), fed either the stream's
 * chunks or, for a file-store object, the blocks the hash thread reads and
 * verifies (block-source.ts); bodies go from that memory to write(2). See
 * docs/SNAPSHOTS.md ("Reading", "Block path").
 *
 * Every path is taken below an fd of the target's parent directory
 * (`/proc/self/fd/N/...`), so a path stays short whatever the parent's own
 * length: an entry path within MAX_ARCHIVE_PATH_BYTES can always be named.
 */
import { closeSync, constants as fsc, fchmodSync, chmodSync, futimesSync, mkdirSync, openSync, symlinkSync, utimesSync, write, writeSync } from "node:fs";
import { lstat, mkdir, mkdtemp, open, readdir, rename, rm, unlink, chmod } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { setImmediate as nextTurn } from "node:timers/promises";
import { ErrorCodes } from "../../errors/index.js";
import { claimBlockSource, type BlockSource } from "./block-source.js";
import { EntryRules, showPath, tarError, type CheckedEntry } from "./entry-rules.js";
import type { ArchiveLimits, ExtractStats } from "./index.js";
import { DATA, HEADER, NEED, TarReader } from "./tar-reader.js";
import type { Headers } from "./tar-io.js";

/**
 * The extraction loop is synchronous (reads are handed to it, every
 * create/write/close is a sync syscall: a thread-pool round trip per small
 * file made hydrating many small files 2-3x slower than `tar -x`). It
 * gives the event loop a turn whenever it has run this long, so timers and
 * other jobs' I/O wait at most about this much (plus one syscall).
 */
const SLICE_MS = 5;

/** Files: permission bits minus group/other write, owner can always read and write. */
function fileMode(mode: number): number {
  return (mode & 0o755) | 0o600;
}
function dirMode(mode: number): number {
  return (mode & 0o755) | 0o700;
}

export async function extractTar(
  hostDir: string,
  tar: Readable,
  limits: ArchiveLimits & { signal?: AbortSignal },
): Promise<ExtractStats> {
  const { signal, ...caps } = limits;
  const rules = new EntryRules({ mode: "strict", limits: caps });
  // Claimed before the first await: nothing else may start reading the stream meanwhile.
  const blocks = claimBlockSource(tar);
  let parent: Awaited<ReturnType<typeof open>> | null = null;
  let staging: string | null = null;
  let x: Extraction | null = null;
  try {
    signal?.throwIfAborted();
    await mkdir(dirname(hostDir), { recursive: true });
    parent = await open(dirname(hostDir), fsc.O_RDONLY | fsc.O_DIRECTORY);
    const base = `/proc/self/fd/${parent.fd}`;
    staging = join(base, basename(await mkdtemp(join(dirname(hostDir), `.${basename(hostDir)}.extract-`))));
    x = new Extraction(staging, rules);
    if (blocks) await x.fromBlocks(blocks, signal);
    else await x.fromStream(tar, signal);
    x.finishDirs();
    await commit(staging, join(base, basename(hostDir)));
    return { files: rules.stats.files, bytes: rules.stats.bytes };
  } finally {
    x?.abandon();
    if (blocks) await blocks.close();
    else if (!tar.readableEnded && !tar.destroyed) tar.destroy();
    if (staging !== null) await rm(staging, { recursive: true, force: true });
    await parent?.close();
  }
}

/**
 * Body pieces this large (up to 1 MiB: large files) are written through the
 * thread pool, one at a time: when the disk falls behind, the kernel
 * throttles the writing thread for up to hundreds of milliseconds, and that
 * must not be the event loop (a synchronous 1 MiB write stalled it for
 * 139 ms on a slow disk). A round trip per MiB costs little; per small
 * file it cost 2-3x, so small files stay synchronous.
 */
const ASYNC_WRITE_MIN = 256 * 1024;

function writeAll(fd: number, data: Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const step = (off: number) =>
      write(fd, data, off, data.length - off, null, (err, n) => {
        if (err) reject(err);
        else if (off + n < data.length) step(off + n);
        else resolve();
      });
    step(0);
  });
}

const CREATE_FLAGS = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
/** Read once: with the usual 022 the create mode is already exact and the fchmod can be skipped. */
const UMASK = process.umask();
const needsChmod = (mode: number) => (mode & ~UMASK) !== mode;

/**
 * One archive being written into a staging directory: input chunks go
 * through the tar reader, each header through the rules, each body from
 * the input chunk straight to write(2).
 */
class Extraction {
  private readonly reader = new TarReader();
  private readonly dirs: { path: string; mode: number; mtime: Date }[] = [];
  private readonly made = new Set<string>();
  /** The file whose body is being written, or -1. */
  private fd = -1;
  private fileMode = 0;
  private fileMtime = new Date(0);
  private lastTurn = performance.now();

  constructor(
    private readonly staging: string,
    private readonly rules: EntryRules,
  ) {}

  async fromBlocks(src: BlockSource, signal?: AbortSignal): Promise<void> {
    for (;;) {
      signal?.throwIfAborted();
      const block = await src.next();
      if (block === null) break;
      await this.consume(block);
      await this.maybeYield();
    }
    this.reader.end();
  }

  async fromStream(tar: Readable, signal?: AbortSignal): Promise<void> {
    // The input's own error (a broken connection, an abort) is rethrown as it is, so a retryable fault stays retryable.
    const onAbort = () => tar.destroy((signal?.reason as Error | undefined) ?? new Error("aborted"));
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      signal?.throwIfAborted();
      for await (const chunk of tar) {
        await this.consume(typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer));
        await this.maybeYield();
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    this.reader.end();
  }

  private async maybeYield(): Promise<void> {
    if (performance.now() - this.lastTurn < SLICE_MS) return;
    await nextTurn();
    this.lastTurn = performance.now();
  }

  /** Everything in `chunk`; the chunk may be reused once this resolves. */
  private async consume(chunk: Buffer): Promise<void> {
    const r = this.reader;
    r.feed(chunk);
    for (;;) {
      const ev = r.next();
      if (ev === NEED) return;
      if (ev === HEADER) {
        this.begin(r.header);
        await this.maybeYield(); // a chunk of small files can take longer than a slice
      } else if (ev === DATA && this.fd >= 0) {
        const data = r.data;
        if (data.length >= ASYNC_WRITE_MIN) await writeAll(this.fd, data);
        else for (let off = 0; off < data.length; ) off += writeSync(this.fd, data, off, data.length - off);
        if (r.bodyLeft === 0) this.finishFile();
      }
    }
  }

  private begin(h: Headers): void {
    const entry: CheckedEntry | null = this.rules.check(h);
    if (entry === null) return; // skipped: its body (if any) is read past
    const dest = join(this.staging, entry.path);
    // Parents are known-good: the rules refused any path through a symlink or a file.
    const parent = dirname(dest);
    if (parent !== this.staging && !this.made.has(parent)) {
      mkdirSync(parent, { recursive: true, mode: 0o755 });
      this.made.add(parent);
    }
    if (entry.kind === "directory") {
      if (!this.made.has(dest)) mkdirSync(dest, { recursive: true, mode: 0o700 });
      this.made.add(dest);
      this.dirs.push({ path: dest, mode: dirMode(entry.mode), mtime: entry.mtime });
    } else if (entry.kind === "symlink") {
      symlinkSync(entry.linkname!, dest);
    } else {
      // O_EXCL|O_NOFOLLOW: never write through a link or over something already there.
      this.fileMode = fileMode(entry.mode);
      this.fileMtime = entry.mtime;
      this.fd = openSync(dest, CREATE_FLAGS, this.fileMode);
      if (entry.size === 0) this.finishFile();
    }
  }

  private finishFile(): void {
    const fd = this.fd;
    this.fd = -1;
    try {
      if (needsChmod(this.fileMode)) fchmodSync(fd, this.fileMode); // the process umask must not decide
      futimesSync(fd, this.fileMtime, this.fileMtime);
    } finally {
      closeSync(fd);
    }
  }

  /** Modes and mtimes of directories, deepest first, so setting a parent's mtime is not undone by its children. */
  finishDirs(): void {
    for (const d of this.dirs.reverse()) {
      chmodSync(d.path, d.mode);
      utimesSync(d.path, d.mtime, d.mtime);
    }
  }

  /** Closes a file left open by a failure. */
  abandon(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

type Op = { kind: "move" | "replace"; from: string; to: string };

async function lstatOrNull(p: string) {
  try {
    return await lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

/** Plans every move (read-only), then performs them. */
async function commit(staging: string, target: string): Promise<void> {
  const top = await lstatOrNull(target);
  if (top === null) {
    await chmod(staging, 0o755); // mkdtemp made it 0700; it becomes the workspace root
    await rename(staging, target);
    await mkdir(staging); // the finally in extractTar removes it again
    return;
  }
  const ops: Op[] = [];
  await plan(staging, target, "", ops);
  for (const op of ops) {
    if (op.kind === "replace") await unlink(op.to);
    await rename(op.from, op.to);
  }
}

async function plan(stagedDir: string, targetDir: string, rel: string, ops: Op[]): Promise<void> {
  for (const d of await readdir(stagedDir, { withFileTypes: true })) {
    const from = join(stagedDir, d.name);
    const to = join(targetDir, d.name);
    const relPath = rel ? `${rel}/${d.name}` : d.name;
    const existing = await lstatOrNull(to);
    if (existing === null) {
      ops.push({ kind: "move", from, to });
    } else if (d.isDirectory()) {
      if (existing.isDirectory()) await plan(from, to, relPath, ops);
      else if (existing.isSymbolicLink()) {
        throw tarError(ErrorCodes.TAR_THROUGH_SYMLINK, `archive rejected: ${showPath(relPath)} is a symlink in the workspace, the archive puts a directory there`, relPath);
      } else ops.push({ kind: "replace", from, to });
    } else if (existing.isDirectory()) {
      throw tarError(ErrorCodes.TAR_DUPLICATE, `archive rejected: ${showPath(relPath)} is a directory in the workspace, the archive puts a file there`, relPath);
    } else {
      ops.push({ kind: "replace", from, to }); // unlink, never follow, then move
    }
  }
}
