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
 * (TAR_THROUGH_SYMLINK), a file where the target has a directory is refused
 * (TAR_DUPLICATE), and archive symlinks are re-resolved against the existing
 * tree. The moves themselves are not atomic as a group (a crash half-way
 * leaves some entries moved), which is acceptable for a sandbox workspace
 * that is discarded on failure. The sandbox must not run while extracting.
 */
import { closeSync, constants as fsc, fchmodSync, futimesSync, mkdirSync, openSync, symlinkSync, writeSync, writevSync } from "node:fs";
import { lstat, mkdir, mkdtemp, open, readdir, readlink, realpath, rename, rm, unlink, utimes, chmod, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { ErrorCodes } from "../../errors/index.js";
import { EntryRules, linkStaysInside, showPath, tarError } from "./entry-rules.js";
import type { ArchiveLimits, ExtractStats } from "./index.js";
import { drain, readBody, readEntries, type TarEntry } from "./tar-io.js";

const WRITE_BATCH_BYTES = 1 << 20;
/**
 * Writes of a large file in flight at once: the body keeps arriving (and
 * the next entries are parsed) while the thread pool copies earlier
 * batches into the page cache.
 */
const MAX_WRITES_IN_FLIGHT = 4;
/**
 * Entries up to this size are buffered and written with synchronous calls
 * (each blocks the event loop for well under a millisecond; the loop runs
 * between entries). Thread-pool round trips per small file (open, write,
 * utimes, close) made hydrating a tree of small files 2-3x slower than
 * `tar -x`, and running several at once did not help: creates serialise.
 */
const SMALL_FILE_MAX = 256 * 1024;

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
  await mkdir(dirname(hostDir), { recursive: true });
  const staging = await mkdtemp(join(dirname(hostDir), `.${basename(hostDir)}.extract-`));
  const dirs: { path: string; mode: number; mtime: Date }[] = [];
  const made = new Set<string>();
  try {
    for await (const e of readEntries(tar, signal)) {
      const entry = await rules.check(e.header);
      if (entry === null) {
        await drain(e);
        continue;
      }
      const dest = join(staging, entry.path);
      // Parents are known-good: the rules refused any path through a symlink or a file.
      const parent = dirname(dest);
      if (parent !== staging && !made.has(parent)) {
        mkdirSync(parent, { recursive: true, mode: 0o755 });
        made.add(parent);
      }
      if (entry.kind === "directory") {
        await drain(e);
        if (!made.has(dest)) mkdirSync(dest, { recursive: true, mode: 0o700 });
        made.add(dest);
        dirs.push({ path: dest, mode: dirMode(entry.mode), mtime: entry.mtime });
      } else if (entry.kind === "symlink") {
        await drain(e);
        symlinkSync(entry.linkname!, dest);
      } else if (entry.size <= SMALL_FILE_MAX) {
        const chunks: Buffer[] = [];
        await readBody(e, entry.size, showPath(entry.path), (c) => void chunks.push(c));
        writeSmallFile(dest, fileMode(entry.mode), entry.mtime, chunks);
      } else {
        await writeLargeFile(dest, fileMode(entry.mode), entry.mtime, e, entry.size, showPath(entry.path));
      }
    }
    // Deepest first, so setting a parent's mtime is not undone by its children.
    for (const d of dirs.reverse()) {
      await chmod(d.path, d.mode);
      await utimes(d.path, d.mtime, d.mtime);
    }
    await commit(staging, hostDir, rules);
    return { files: rules.stats.files, bytes: rules.stats.bytes };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

const CREATE_FLAGS = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
/** Read once: with the usual 022 the create mode is already exact and the fchmod can be skipped. */
const UMASK = process.umask();
const needsChmod = (mode: number) => (mode & ~UMASK) !== mode;

function writeSmallFile(dest: string, mode: number, mtime: Date, chunks: Buffer[]): void {
  const fd = openSync(dest, CREATE_FLAGS, mode);
  try {
    const total = chunks.reduce((n, c) => n + c.length, 0);
    const done = chunks.length ? writevSync(fd, chunks) : 0;
    if (done < total) {
      // A short write (rare for regular files): finish with plain writes.
      const rest = Buffer.concat(chunks).subarray(done);
      for (let off = 0; off < rest.length; ) off += writeSync(fd, rest, off);
    }
    if (needsChmod(mode)) fchmodSync(fd, mode);
    futimesSync(fd, mtime, mtime);
  } finally {
    closeSync(fd);
  }
}

async function writeLargeFile(dest: string, mode: number, mtime: Date, e: TarEntry, size: number, path: string): Promise<void> {
  // O_EXCL|O_NOFOLLOW: never write through a link or over something already there.
  const fh = await open(dest, CREATE_FLAGS, mode);
  try {
    const inFlight = new Set<Promise<void>>();
    let failure: unknown = null;
    let batch: Buffer[] = [];
    let batchBytes = 0;
    let position = 0;
    const flush = () => {
      const w: Promise<void> = writevAt(fh, batch, position)
        .catch((err: unknown) => void (failure ??= err))
        .finally(() => inFlight.delete(w));
      inFlight.add(w);
      position += batchBytes;
      batch = [];
      batchBytes = 0;
    };
    try {
      await readBody(e, size, path, (chunk) => {
        if (failure !== null) throw failure;
        batch.push(chunk);
        batchBytes += chunk.length;
        if (batchBytes >= WRITE_BATCH_BYTES) flush();
        if (inFlight.size >= MAX_WRITES_IN_FLIGHT) return Promise.race(inFlight);
      });
      if (batchBytes > 0) flush();
    } finally {
      await Promise.all(inFlight);
    }
    if (failure !== null) throw failure;
    if (needsChmod(mode)) await fh.chmod(mode); // the process umask must not decide
    await fh.utimes(mtime, mtime);
  } finally {
    await fh.close();
  }
}

/** writev at an offset, finishing a short write. */
async function writevAt(fh: FileHandle, buffers: Buffer[], position: number): Promise<void> {
  const total = buffers.reduce((n, b) => n + b.length, 0);
  const { bytesWritten } = await fh.writev(buffers, position);
  if (bytesWritten === total) return;
  const rest = Buffer.concat(buffers).subarray(bytesWritten);
  for (let off = 0; off < rest.length; ) off += (await fh.write(rest, off, rest.length - off, position + bytesWritten + off)).bytesWritten;
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
async function commit(staging: string, hostDir: string, rules: EntryRules): Promise<void> {
  const top = await lstatOrNull(hostDir);
  if (top === null) {
    await chmod(staging, 0o755); // mkdtemp made it 0700; it becomes the workspace root
    await rename(staging, hostDir);
    await mkdir(staging); // the finally in extractTar removes it again
    return;
  }
  const root = await realpath(hostDir);
  const ops: Op[] = [];
  await plan(staging, root, "", ops);

  // Links are re-resolved against the merged tree: archive entries first, then what is on disk.
  if (ops.some((o) => o.kind === "replace") || (await readdir(root)).length > 0) {
    const lookup = async (key: string): Promise<string | undefined> => {
      const k = rules.kinds.get(key);
      if (k === "symlink") return rules.symlinks.get(key);
      if (k !== undefined) return undefined;
      const st = await lstatOrNull(join(root, key));
      return st?.isSymbolicLink() ? await readlink(join(root, key)) : undefined;
    };
    for (const [key, target] of rules.symlinks) {
      if (!(await linkStaysInside(key.split("/"), target, lookup))) {
        throw tarError(ErrorCodes.TAR_LINK_OUTSIDE, `archive rejected: ${showPath(key)} is a symlink to ${showPath(target)}, which leaves the workspace`, key);
      }
    }
  }

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
