/**
 * The rules every tar entry passes before anything is done with it, modelled
 * on Python's tarfile `filter='data'` and the OpenAI Agents SDK's validation.
 *
 * Two modes share one rule set:
 * - "strict" (archives coming IN: extractTar, validateTar): any violation
 *   rejects the whole archive with the specific SANDQ_ERR_TAR_* code;
 * - "normalize" (workspaces going OUT: packDir, normalizeTar): the content is
 *   the job's own output, so entries a trusted extractor would refuse are
 *   dropped (special files, hardlinks) or cleaned (setid bits), and the caps
 *   (size, entries, depth, path length) fail with WORKSPACE_LIMIT (a job
 *   limit, reported as status `killed`, reason `workspace_limit`). What we
 *   produce always passes the strict rules, so every snapshot can be
 *   hydrated again.
 *
 * Symlink targets are data: stored and restored verbatim, whatever they
 * point at (an absolute `/usr/bin/python3`, a `../../etc`). They only mean
 * something inside a sandbox, resolved against its own root; the host never
 * follows one (no entry is written below a symlink, files are created
 * O_NOFOLLOW|O_EXCL, packing lstat()s and never descends into a link).
 */
import type { Headers } from "./tar-io.js";
import { ErrorCodes, SnapshotError, type ErrorCode } from "../../errors/index.js";
import type { PathMatcher } from "./glob.js";
import type { ArchiveLimits } from "./index.js";

export type EntryKind = "file" | "directory" | "symlink";
export type RuleMode = "strict" | "normalize";

export interface CheckedEntry {
  /** Normalised relative path: segments joined by "/", no "." or "" segments. */
  path: string;
  kind: EntryKind;
  size: number;
  /** Permission bits only (0o777); setid/sticky bits never survive. */
  mode: number;
  mtime: Date;
  linkname?: string;
  uid: number;
  gid: number;
}

/**
 * Longest entry path (normalised, relative to the workspace, in UTF-8 bytes)
 * an archive may hold, in and out. Linux refuses any path of PATH_MAX (4096)
 * bytes or more; 1024 of them are left for wherever the workspace lives (the
 * sandbox's `/workspace/`, an engine's storage directory). The archive code
 * itself reaches entries through short `/proc/self/fd/N/` paths, so the
 * worker's own work directory does not count against it. Inline `files`
 * keys are held to the same limit.
 */
export const MAX_ARCHIVE_PATH_BYTES = 3072;
/** Longest path segment (NAME_MAX of Linux filesystems). */
export const MAX_ARCHIVE_SEGMENT_BYTES = 255;
/** Longest symlink target symlink(2) accepts (PATH_MAX minus the NUL). */
const MAX_LINK_TARGET_BYTES = 4095;

export function tarError(code: ErrorCode, message: string, path?: string): SnapshotError {
  return new SnapshotError(code, message, { retryable: false, details: path === undefined ? undefined : { path } });
}

export function showPath(p: string): string {
  const s = JSON.stringify(p);
  return s.length > 120 ? `${s.slice(0, 117)}..."` : s;
}

export interface EntryRulesOptions {
  mode: RuleMode;
  limits: ArchiveLimits;
  exclude?: PathMatcher | null;
  /** Leading path segments dropped (an engine's archive of /workspace starts with "workspace/"). */
  stripComponents?: number;
  /** Keep header mtimes (normalize mode); otherwise every mtime is 0 so identical trees give identical bytes. */
  keepMtime?: boolean;
}

export interface RuleStats {
  entries: number;
  files: number;
  bytes: number;
  /** Entries dropped in normalize mode (special files, hardlinks). */
  skipped: number;
}

export class EntryRules {
  readonly stats: RuleStats = { entries: 0, files: 0, bytes: 0, skipped: 0 };
  /** Every path seen: explicit entries, and parents created implicitly ("implicit"). */
  readonly kinds = new Map<string, EntryKind | "implicit">();
  private readonly opts: EntryRulesOptions;

  constructor(opts: EntryRulesOptions) {
    this.opts = opts;
  }

  private fail(code: ErrorCode, message: string, path: string): never {
    throw tarError(code, `archive rejected: ${showPath(path)} ${message}`, path);
  }

  private limit(what: string, path: string, strictCode: ErrorCode): never {
    if (this.opts.mode === "normalize") {
      throw new SnapshotError(ErrorCodes.WORKSPACE_LIMIT, `workspace exceeds its ${what} limit (at ${showPath(path)})`, {
        retryable: false,
        details: { limit: what },
      });
    }
    this.fail(strictCode, `exceeds the archive's ${what} limit`, path);
  }

  /** Whether an exclude pattern covers this normalised relative path. */
  isExcluded(path: string): boolean {
    return this.opts.exclude?.(path) ?? false;
  }

  /**
   * Splits a name into normalised segments (null for the archive root
   * itself), refusing NUL, absolute and `..` names. Lengths and depth are
   * checked by checkPath, after excludes.
   */
  splitName(raw: string): string[] | null {
    if (raw.includes("\0")) this.fail(ErrorCodes.TAR_CORRUPT, "contains a NUL byte", raw);
    if (raw.startsWith("/")) this.fail(ErrorCodes.TAR_ABSOLUTE_PATH, "is an absolute path", raw);
    let parts = raw.split("/").filter((s) => s !== "" && s !== ".");
    if (parts.includes("..")) this.fail(ErrorCodes.TAR_PARENT_PATH, "contains '..'", raw);
    const strip = this.opts.stripComponents ?? 0;
    if (strip > 0) parts = parts.slice(strip);
    return parts.length === 0 ? null : parts;
  }

  /**
   * Path length, segment length and depth of a normalised path: strict mode
   * refuses the archive (TAR_PATH_TOO_LONG, TAR_PATH_TOO_DEEP), normalize
   * mode fails with WORKSPACE_LIMIT.
   */
  private checkPath(path: string, depth: number): void {
    const bytes = Buffer.byteLength(path);
    const seg = bytes > MAX_ARCHIVE_SEGMENT_BYTES ? path.split("/").find((s) => Buffer.byteLength(s) > MAX_ARCHIVE_SEGMENT_BYTES) : undefined;
    if (bytes > MAX_ARCHIVE_PATH_BYTES || seg !== undefined) {
      if (this.opts.mode === "normalize") this.limit("path length", path, ErrorCodes.TAR_PATH_TOO_LONG);
      this.fail(
        ErrorCodes.TAR_PATH_TOO_LONG,
        seg === undefined
          ? `is ${bytes} bytes long; paths are limited to ${MAX_ARCHIVE_PATH_BYTES} bytes`
          : `has a segment of ${Buffer.byteLength(seg)} bytes; a file name is limited to ${MAX_ARCHIVE_SEGMENT_BYTES} bytes`,
        path,
      );
    }
    if (depth > this.opts.limits.maxDepth) this.limit("path depth", path, ErrorCodes.TAR_PATH_TOO_DEEP);
  }

  /**
   * Checks one header. Returns the entry to write, or null when it is to be
   * skipped (the archive root, an excluded path, or - in normalize mode - an
   * entry a strict reader would refuse). Throws SnapshotError otherwise.
   */
  check(h: Headers): CheckedEntry | null {
    const normalize = this.opts.mode === "normalize";
    const parts = this.splitName(h.name);
    if (parts === null) return this.checkRoot(h);
    const path = parts.join("/");
    if (this.opts.exclude?.(path)) return null;
    this.checkPath(path, parts.length);

    const kind = this.kindOf(h, path);
    if (kind === null) return this.skip();
    const { size, mode: rawMode } = this.sizeAndMode(h, kind, path);

    // Parents: never through a symlink, never below a file.
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join("/");
      const k = this.kinds.get(prefix);
      if (k === "symlink") this.fail(ErrorCodes.TAR_THROUGH_SYMLINK, `goes through the symlink ${showPath(prefix)}`, path);
      if (k === "file") this.fail(ErrorCodes.TAR_DUPLICATE, `needs ${showPath(prefix)} to be a directory, but it is a file`, path);
      if (k === undefined) this.kinds.set(prefix, "implicit");
    }
    const seen = this.kinds.get(path);
    if (seen !== undefined && !(seen === "implicit" && kind === "directory")) {
      this.fail(ErrorCodes.TAR_DUPLICATE, "appears more than once", path);
    }

    if (kind === "symlink") {
      // The target is never resolved on the host: only its form is checked.
      const target = h.linkname ?? "";
      if (target === "" || target.includes("\0")) this.fail(ErrorCodes.TAR_CORRUPT, "is a symlink without a valid target", path);
      if (Buffer.byteLength(target) > MAX_LINK_TARGET_BYTES) {
        this.fail(ErrorCodes.TAR_PATH_TOO_LONG, `has a symlink target of ${Buffer.byteLength(target)} bytes; the limit is ${MAX_LINK_TARGET_BYTES}`, path);
      }
    }

    if (++this.stats.entries > this.opts.limits.maxEntries) this.limit("entry count", path, ErrorCodes.TAR_TOO_MANY_ENTRIES);
    if (kind === "file") {
      this.stats.files++;
      this.stats.bytes += size;
      if (this.stats.bytes > this.opts.limits.maxBytes) this.limit("total size", path, ErrorCodes.TAR_TOO_LARGE);
    }
    this.kinds.set(path, kind);

    const entry: CheckedEntry = {
      path,
      kind,
      size,
      mode: rawMode & 0o777,
      mtime: normalize && !this.opts.keepMtime ? new Date(0) : (h.mtime ?? new Date(0)),
      uid: normalize ? 0 : (h.uid ?? 0),
      gid: normalize ? 0 : (h.gid ?? 0),
    };
    if (kind === "symlink") entry.linkname = h.linkname!;
    return entry;
  }

  /** The entry's kind; null when normalize mode drops it; throws in strict mode for kinds that are refused. */
  private kindOf(h: Headers, path: string): EntryKind | null {
    const normalize = this.opts.mode === "normalize";
    if (h.sparse) {
      // GNU sparse files (old 'S' entries, pax GNU.sparse.* formats 0.0/0.1/1.0) carry a map a plain reader would write as content.
      if (normalize) return null;
      this.fail(ErrorCodes.TAR_SPECIAL_FILE, "is a GNU sparse file (sparse entries are not supported)", path);
    }
    switch (h.type) {
      case "file":
      case "contiguous-file":
        return "file";
      case "directory":
        return "directory";
      case "symlink":
        return "symlink";
      case "link":
        if (normalize) return null;
        this.fail(ErrorCodes.TAR_HARDLINK, "is a hard link", path);
      // eslint-disable-next-line no-fallthrough
      default:
        if (normalize) return null;
        this.fail(ErrorCodes.TAR_SPECIAL_FILE, `is a ${h.type ?? "special"} entry (only files, directories and symlinks are allowed)`, path);
    }
  }

  private sizeAndMode(h: Headers, kind: EntryKind, path: string): { size: number; mode: number } {
    const size = h.size ?? 0;
    if (!Number.isSafeInteger(size) || size < 0) this.fail(ErrorCodes.TAR_SIZE_MISMATCH, "has an invalid size", path);
    if (kind !== "file" && size !== 0) this.fail(ErrorCodes.TAR_SIZE_MISMATCH, `is a ${kind} with a body of ${size} bytes`, path);
    const mode = h.mode ?? (kind === "directory" ? 0o755 : 0o644);
    if ((mode & 0o7000) !== 0 && this.opts.mode === "strict") this.fail(ErrorCodes.TAR_SETID, "has setuid, setgid or sticky bits", path);
    return { size, mode };
  }

  /**
   * The archive root (`./`, or what stripComponents leaves of an engine's
   * top directory) stands for the workspace directory itself, which is
   * never replaced: a directory passes the same checks as any other and is
   * then skipped (its mode and mtime are not applied); anything else is
   * refused in strict mode with the code it would get elsewhere (hard link,
   * special file), or TAR_DUPLICATE for a file or symlink where the
   * workspace has its directory.
   */
  private checkRoot(h: Headers): null {
    const kind = this.kindOf(h, ".");
    if (kind === null) return this.skip();
    this.sizeAndMode(h, kind, ".");
    if (kind === "directory") return null;
    if (this.opts.mode === "normalize") return this.skip();
    this.fail(ErrorCodes.TAR_DUPLICATE, `is a ${kind} at the archive root, where the workspace directory is`, ".");
  }

  private skip(): null {
    this.stats.skipped++;
    return null;
  }
}
