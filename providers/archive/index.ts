/**
 * Workspace archives: the one place tar streams are validated, extracted and
 * produced. Used by every provider (putArchive/getArchive) and by the
 * snapshot pipeline. See docs/ERRORS.md for the SANDQ_ERR_TAR_* rules.
 */
import type { Readable } from "node:stream";

export interface ArchiveLimits {
  /** Total bytes of file content. */
  maxBytes: number;
  /** Number of entries (files + dirs + symlinks). */
  maxEntries: number;
  /** Path depth in segments. */
  maxDepth: number;
}

export interface PackOptions extends Partial<ArchiveLimits> {
  /** Glob patterns (relative to the packed dir) left out of the archive. */
  exclude?: string[];
}

export interface ExtractStats {
  files: number;
  bytes: number;
}

export { extractTar } from "./extract.js";
export { MAX_ARCHIVE_PATH_BYTES, MAX_ARCHIVE_SEGMENT_BYTES } from "./entry-rules.js";
export { packDir, normalizeTar, validateTar, filesToTar, DEFAULT_ARCHIVE_LIMITS, type PackExtras } from "./pack.js";
export { readValidatedTar } from "./read-validated.js";
export type { ArchiveStream } from "./tar-io.js";
export { compileExcludes, globToRegExp } from "./glob.js";
