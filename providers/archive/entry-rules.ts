/**
 * The rules every tar entry passes before anything is done with it, modelled
 * on Python's tarfile `filter='data'` and the OpenAI Agents SDK's validation.
 *
 * Two modes share one rule set:
 * - "strict" (archives coming IN: extractTar, validateTar): any violation
 *   rejects the whole archive with the specific SANDQ_ERR_TAR_* code;
 * - "normalize" (workspaces going OUT: packDir, normalizeTar): the content is
 *   the job's own output, so entries a trusted extractor would refuse are
 *   dropped (special files, hardlinks, links that escape) or cleaned (setid
 *   bits), and the size caps fail with WORKSPACE_LIMIT (a job limit, reported
 *   as status `killed`, reason `workspace_limit`). What we produce always
 *   passes the strict rules, so every snapshot can be hydrated again.
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

/** Linux MAXSYMLINKS: deeper chains fail with ELOOP, so they cannot lead anywhere. */
const MAX_LINK_HOPS = 40;
const MAX_SEGMENT_BYTES = 255;
const MAX_PATH_BYTES = 4096;

export function tarError(code: ErrorCode, message: string, path?: string): SnapshotError {
  return new SnapshotError(code, message, { retryable: false, details: path === undefined ? undefined : { path } });
}

export function showPath(p: string): string {
  const s = JSON.stringify(p);
  return s.length > 120 ? `${s.slice(0, 117)}..."` : s;
}

/** Looks up whether a relative path (segments joined by "/") is a symlink, and its target. */
export type LinkLookup = (key: string) => string | undefined | Promise<string | undefined>;

/**
 * Resolves a symlink target the way the kernel would, over a virtual tree
 * whose symlinks are given by `lookup`, and says whether it stays inside the
 * root. Lexical normalisation alone is not enough: with `up -> .` a target
 * `up/..` leaves the root although it looks harmless.
 */
export async function linkStaysInside(linkPath: string[], target: string, lookup: LinkLookup): Promise<boolean> {
  if (target.startsWith("/")) return false;
  const stack = linkPath.slice(0, -1);
  let pending = target.split("/");
  let hops = 0;
  while (pending.length > 0) {
    const c = pending.shift()!;
    if (c === "" || c === ".") continue;
    if (c === "..") {
      if (stack.length === 0) return false;
      stack.pop();
      continue;
    }
    stack.push(c);
    const t = await lookup(stack.join("/"));
    if (t === undefined) continue;
    if (++hops > MAX_LINK_HOPS) return true; // ELOOP: never resolves, so never escapes
    if (t.startsWith("/")) return false;
    stack.pop();
    pending = [...t.split("/"), ...pending];
  }
  return true;
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
  /** Entries dropped in normalize mode (special files, hardlinks, escaping links). */
  skipped: number;
}

export class EntryRules {
  readonly stats: RuleStats = { entries: 0, files: 0, bytes: 0, skipped: 0 };
  /** Every path seen: explicit entries, and parents created implicitly ("implicit"). */
  readonly kinds = new Map<string, EntryKind | "implicit">();
  readonly symlinks = new Map<string, string>();
  /** Links whose target has ".." in it: the only ones a later link can make escape. */
  private readonly climbing = new Set<string>();
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

  /** Splits and checks a name; returns null for the archive root itself. */
  splitName(raw: string): string[] | null {
    if (raw.includes("\0")) this.fail(ErrorCodes.TAR_CORRUPT, "contains a NUL byte", raw);
    if (raw.startsWith("/")) this.fail(ErrorCodes.TAR_ABSOLUTE_PATH, "is an absolute path", raw);
    let parts = raw.split("/").filter((s) => s !== "" && s !== ".");
    if (parts.includes("..")) this.fail(ErrorCodes.TAR_PARENT_PATH, "contains '..'", raw);
    const strip = this.opts.stripComponents ?? 0;
    if (strip > 0) parts = parts.slice(strip);
    if (parts.length === 0) return null;
    if (Buffer.byteLength(raw) > MAX_PATH_BYTES || parts.some((s) => Buffer.byteLength(s) > MAX_SEGMENT_BYTES)) {
      this.fail(ErrorCodes.TAR_CORRUPT, "has a name longer than the filesystem allows", raw);
    }
    if (parts.length > this.opts.limits.maxDepth) this.limit("path depth", raw, ErrorCodes.TAR_PATH_TOO_DEEP);
    return parts;
  }

  /**
   * Checks one header. Returns the entry to write, or null when it is to be
   * skipped (the archive root, an excluded path, or - in normalize mode - an
   * entry a strict reader would refuse). Throws SnapshotError otherwise.
   */
  async check(h: Headers): Promise<CheckedEntry | null> {
    const normalize = this.opts.mode === "normalize";
    const parts = this.splitName(h.name);
    if (parts === null) return null;
    const path = parts.join("/");
    if (this.opts.exclude?.(path)) return null;

    let kind: EntryKind;
    switch (h.type) {
      case "file":
      case "contiguous-file":
        kind = "file";
        break;
      case "directory":
        kind = "directory";
        break;
      case "symlink":
        kind = "symlink";
        break;
      case "link":
        if (normalize) return this.skip();
        this.fail(ErrorCodes.TAR_HARDLINK, "is a hard link", path);
      // eslint-disable-next-line no-fallthrough
      default:
        if (normalize) return this.skip();
        this.fail(ErrorCodes.TAR_SPECIAL_FILE, `is a ${h.type ?? "special"} entry (only files, directories and symlinks are allowed)`, path);
    }

    const size = h.size ?? 0;
    if (!Number.isSafeInteger(size) || size < 0) this.fail(ErrorCodes.TAR_SIZE_MISMATCH, "has an invalid size", path);
    if (kind !== "file" && size !== 0) this.fail(ErrorCodes.TAR_SIZE_MISMATCH, `is a ${kind} with a body of ${size} bytes`, path);

    const rawMode = h.mode ?? (kind === "directory" ? 0o755 : 0o644);
    if ((rawMode & 0o7000) !== 0 && !normalize) this.fail(ErrorCodes.TAR_SETID, "has setuid, setgid or sticky bits", path);

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
      const target = h.linkname ?? "";
      if (target === "" || target.includes("\0")) this.fail(ErrorCodes.TAR_CORRUPT, "is a symlink without a valid target", path);
      if (Buffer.byteLength(target) > MAX_PATH_BYTES) this.fail(ErrorCodes.TAR_CORRUPT, "has a symlink target that is too long", path);
      if (!(await this.addLink(parts, target))) {
        if (normalize) return this.skip();
        this.fail(ErrorCodes.TAR_LINK_OUTSIDE, `is a symlink to ${showPath(target)}, which leaves the archive root`, path);
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

  private skip(): null {
    this.stats.skipped++;
    return null;
  }

  /**
   * Adds a link if it and every earlier ".."-link still resolve inside the
   * root with it in place; otherwise leaves the tree unchanged.
   */
  private async addLink(parts: string[], target: string): Promise<boolean> {
    const key = parts.join("/");
    const lookup: LinkLookup = (k) => this.symlinks.get(k);
    this.symlinks.set(key, target);
    let ok = await linkStaysInside(parts, target, lookup);
    if (ok) {
      for (const other of this.climbing) {
        if (!(await linkStaysInside(other.split("/"), this.symlinks.get(other)!, lookup))) {
          ok = false;
          break;
        }
      }
    }
    if (!ok) {
      this.symlinks.delete(key);
      return false;
    }
    if (target.split("/").includes("..")) this.climbing.add(key);
    return true;
  }
}
