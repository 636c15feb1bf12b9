/**
 * Producing tars: packDir (a host directory), normalizeTar (an engine's
 * archive), validateTar (strict re-encoding for an engine's PUT archive) and
 * filesToTar (inline job files).
 *
 * Determinism: packDir walks depth-first with children sorted by name, and
 * writes uid/gid 0, no user/group names and, unless `keepMtime`, mtime 0.
 * Identical workspaces therefore give identical bytes and one snapshot id.
 * The price: hydrated files all carry mtime 0 (1970), so tools that compare
 * mtimes across a hydrate (make, .pyc caches) rebuild rather than trust them.
 *
 * packDir reaches every path below an fd of the packed directory
 * (`/proc/self/fd/N/<rel>`), so the host's own prefix never pushes a path
 * past PATH_MAX: the walk only descends into directories whose path passed
 * the rules (at most MAX_ARCHIVE_PATH_BYTES), so every path it names is
 * shorter than PATH_MAX, and a longer one fails with WORKSPACE_LIMIT.
 */
import { constants as fsc, type Stats } from "node:fs";
import { lstat, open, opendir, readlink } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import type { Pack } from "tar-stream";
import { ErrorCodes, SnapshotError } from "../../errors/index.js";
import { EntryRules, showPath, tarError, type RuleMode } from "./entry-rules.js";
import { compileExcludes } from "./glob.js";
import type { ArchiveLimits, PackOptions } from "./index.js";
import { headerFor, packEntry, packStream, readEntries, type ArchiveStream, type Headers } from "./tar-io.js";

/**
 * The one default for workspace archives, in and out, on every provider
 * (and the worker's SANDQUEUE_WORKSPACE_MAX_* defaults): a snapshot
 * persisted under the defaults on one provider hydrates on every other.
 */
export const DEFAULT_ARCHIVE_LIMITS: Readonly<ArchiveLimits> = Object.freeze({
  maxBytes: 1024 * 1024 * 1024,
  maxEntries: 100_000,
  maxDepth: 64,
});

export interface PackExtras {
  /** Keep file mtimes instead of writing 0 (breaks de-duplication of identical workspaces). */
  keepMtime?: boolean;
}

const READ_CHUNK = 1024 * 1024;

function limitsOf(opts: Partial<ArchiveLimits>): ArchiveLimits {
  return {
    maxBytes: opts.maxBytes ?? DEFAULT_ARCHIVE_LIMITS.maxBytes,
    maxEntries: opts.maxEntries ?? DEFAULT_ARCHIVE_LIMITS.maxEntries,
    maxDepth: opts.maxDepth ?? DEFAULT_ARCHIVE_LIMITS.maxDepth,
  };
}

function typeOf(st: Stats): Headers["type"] {
  if (st.isFile()) return "file";
  if (st.isDirectory()) return "directory";
  if (st.isSymbolicLink()) return "symlink";
  return "fifo"; // any other kind: the rules drop it in normalize mode
}

/** Streams a regular file's first `size` bytes; never follows a link, never blocks on a FIFO. `rel` names it in messages. */
async function* fileChunks(path: string, rel: string, st: Stats): AsyncGenerator<Buffer> {
  const fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  try {
    const now = await fh.stat();
    if (!now.isFile() || now.ino !== st.ino || now.dev !== st.dev) {
      throw tarError(ErrorCodes.TAR_SIZE_MISMATCH, `${showPath(rel)} changed while it was being archived`);
    }
    let left = st.size;
    while (left > 0) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, left));
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) throw tarError(ErrorCodes.TAR_SIZE_MISMATCH, `${showPath(rel)} shrank while it was being archived`);
      left -= bytesRead;
      yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

/**
 * A deterministic tar of `hostDir`: regular files, directories and symlinks
 * (stored as links whatever their target, never followed); other kinds are
 * skipped. Limits (path length included) fail the stream with WORKSPACE_LIMIT.
 * `stats` on the returned stream is complete once it has ended.
 */
export function packDir(hostDir: string, opts: PackOptions & PackExtras = {}): ArchiveStream {
  const rules = new EntryRules({
    mode: "normalize",
    limits: limitsOf(opts),
    exclude: compileExcludes(opts.exclude),
    keepMtime: opts.keepMtime ?? false,
  });
  const stats = { files: 0, bytes: 0, entries: 0, skipped: 0 };
  return packStream(stats, async (pack) => {
    const top = await lstat(hostDir);
    if (!top.isDirectory()) throw new SnapshotError(ErrorCodes.SNAPSHOT_STORE, "the directory to archive is not a directory");
    const root = await open(hostDir, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
    try {
      await walk(pack, rules, `/proc/self/fd/${root.fd}`, "");
    } finally {
      await root.close();
    }
    Object.assign(stats, rules.stats);
  });
}

/**
 * Per directory, up to LOOKAHEAD entries are prepared ahead of the one being
 * written (lstat, readlink, and the content of small files within a shared
 * byte budget): one file at a time, each file's five thread-pool round trips
 * dominated packing a tree of many small files.
 */
const LOOKAHEAD = 16;
const PREFETCH_FILE_MAX = 256 * 1024;
const PREFETCH_BUDGET = 4 * 1024 * 1024;

interface Prepared {
  st: Stats | null;
  linkname?: string;
  content?: Buffer;
}

async function prepare(abs: string, rel: string, rules: EntryRules, budget: { bytes: number }): Promise<Prepared> {
  try {
    const st = await lstat(abs);
    if (st.isSymbolicLink()) return { st, linkname: await readlink(abs) };
    if (st.isFile() && st.size <= PREFETCH_FILE_MAX && budget.bytes + st.size <= PREFETCH_BUDGET && !rules.isExcluded(rel)) {
      budget.bytes += st.size;
      const chunks: Buffer[] = [];
      for await (const c of fileChunks(abs, rel, st)) chunks.push(c);
      return { st, content: Buffer.concat(chunks) };
    }
    return { st };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { st: null }; // removed while walking
    throw err;
  }
}

async function walk(pack: Pack, rules: EntryRules, abs: string, rel: string, budget = { bytes: 0 }): Promise<void> {
  const names: string[] = [];
  const dir = await opendir(abs, { bufferSize: 256 });
  for await (const d of dir) names.push(d.name);
  // Byte order of the UTF-8 names: stable whatever the locale.
  names.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const relOf = (name: string) => (rel ? `${rel}/${name}` : name);
  const pending: (Promise<Prepared> | undefined)[] = [];
  const start = (i: number) => {
    const p = prepare(join(abs, names[i]!), relOf(names[i]!), rules, budget);
    p.catch(() => {}); // awaited in order below; an earlier failure may leave it unobserved
    pending[i] = p;
  };
  for (let i = 0; i < Math.min(LOOKAHEAD, names.length); i++) start(i);
  for (let i = 0; i < names.length; i++) {
    if (i + LOOKAHEAD < names.length) start(i + LOOKAHEAD);
    const prep = await pending[i]!;
    pending[i] = undefined;
    const name = names[i]!;
    const childAbs = join(abs, name);
    const childRel = relOf(name);
    const st = prep.st;
    if (st === null) continue;
    const type = typeOf(st);
    const header: Headers = {
      name: childRel,
      type,
      mode: st.mode & 0o7777,
      size: type === "file" ? (prep.content?.length ?? st.size) : 0,
      mtime: st.mtime,
    };
    if (prep.linkname !== undefined) header.linkname = prep.linkname;
    const entry = rules.check(header);
    if (entry !== null) {
      if (entry.kind === "file") {
        const content = prep.content;
        await packEntry(pack, headerFor(entry), content ? (async function* () { yield content; })() : fileChunks(childAbs, childRel, st));
      } else await packEntry(pack, headerFor(entry));
    }
    if (prep.content) budget.bytes -= prep.content.length;
    if (entry?.kind === "directory") await walk(pack, rules, childAbs, childRel, budget);
  }
}

/** Re-encodes a tar entry by entry under the given rules (normalize or strict). */
function retar(tar: Readable, mode: RuleMode, limits: ArchiveLimits, extra: { exclude?: string[]; stripComponents?: number; keepMtime?: boolean }): ArchiveStream {
  const rules = new EntryRules({
    mode,
    limits,
    exclude: compileExcludes(extra.exclude),
    stripComponents: extra.stripComponents ?? 0,
    keepMtime: extra.keepMtime ?? false,
  });
  const stats = { files: 0, bytes: 0, entries: 0, skipped: 0 };
  return packStream(stats, async (pack) => {
    for await (const e of readEntries(tar)) {
      // readEntries skips whatever of a body is not read: dropped entries and non-files need nothing.
      const entry = rules.check(e.header);
      if (entry === null) continue;
      await packEntry(pack, headerFor(entry), entry.kind === "file" ? e.body : undefined);
    }
    Object.assign(stats, rules.stats);
  });
}

/**
 * Applies packDir's filtering and limits to a tar from a container engine
 * (GET /containers/{id}/archive). `stripComponents: 1` drops the leading
 * "workspace/" such engines add. Entry order is the engine's: resorting
 * would mean spooling the archive, so ids are only stable per engine.
 * Hardlinks are dropped (their content would need a second read).
 */
export function normalizeTar(tar: Readable, opts: PackOptions & PackExtras & { stripComponents?: number } = {}): ArchiveStream {
  return retar(tar, "normalize", limitsOf(opts), opts);
}

/**
 * Strict validation for a tar on its way to a container engine (PUT
 * archive): every entry is checked before its header is written out, and
 * the stream fails with the SANDQ_ERR_TAR_* code of the first violation.
 * The output is re-encoded (same names, modes, mtimes, owners), so nothing
 * unexpected in headers reaches the engine. An engine extracts as it
 * reads, so a rejected archive may have been partly extracted in that
 * sandbox: the job fails and the sandbox is released, never reused.
 */
export function validateTar(tar: Readable, limits: ArchiveLimits): ArchiveStream {
  return retar(tar, "strict", limits, {});
}

/** Inline job files (text as UTF-8, or exact bytes given as base64) as a tar (sorted, mode 0644, mtime 0), validated like any other archive. */
export function filesToTar(files: Record<string, string | { base64: string }>): ArchiveStream {
  const rules = new EntryRules({ mode: "strict", limits: { maxBytes: Number.MAX_SAFE_INTEGER, maxEntries: Number.MAX_SAFE_INTEGER, maxDepth: 1024 } });
  const stats = { files: 0, bytes: 0, entries: 0, skipped: 0 };
  const names = Object.keys(files).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return packStream(stats, async (pack) => {
    for (const name of names) {
      const content = files[name]!;
      const body = typeof content === "string" ? Buffer.from(content, "utf8") : Buffer.from(content.base64, "base64");
      const entry = rules.check({ name, type: "file", size: body.length, mode: 0o644, mtime: new Date(0) });
      if (entry === null) throw tarError(ErrorCodes.TAR_CORRUPT, `inline file ${showPath(name)} names the workspace itself`, name);
      await packEntry(pack, headerFor(entry), (async function* () {
        yield body;
      })());
    }
    Object.assign(stats, rules.stats);
  });
}
