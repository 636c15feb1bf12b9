/**
 * Snapshot stores and the workspace persist/hydrate helpers the worker
 * pipeline uses. See docs/SNAPSHOTS.md.
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Readable } from "node:stream";
import { ConfigError, ErrorCodes } from "../../errors/index.js";
import type { SnapshotRef } from "../../producer/job-result.js";
import { extractTar, validateTar, type ArchiveLimits, type ArchiveStream, type ExtractStats } from "../../providers/archive/index.js";
import { FileSnapshotStore } from "./file-store.js";
import { S3SnapshotStore, type S3StoreOptions } from "./s3-store.js";
import type { SnapshotStore } from "./store.js";
import { SecretScanner } from "../secrets/scan.js";
import type { WorkspaceStore } from "../run-job.js";

export * from "./store.js";
export { FileSnapshotStore } from "./file-store.js";
export { S3SnapshotStore, type S3StoreOptions } from "./s3-store.js";

/** `file:///abs/dir[?fsync=false]` (default) or `s3://bucket/prefix`. */
export function openSnapshotStore(url: string, opts: { s3?: S3StoreOptions } = {}): SnapshotStore {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new ConfigError(ErrorCodes.CONFIG_INVALID, `snapshot store URL ${JSON.stringify(url)} is not a URL (expected file:///dir or s3://bucket/prefix)`);
  }
  if (u.protocol === "file:") {
    const fsync = u.searchParams.get("fsync");
    if (fsync !== null && fsync !== "true" && fsync !== "false") {
      throw new ConfigError(ErrorCodes.CONFIG_INVALID, `snapshot store URL ${JSON.stringify(url)}: fsync must be true or false`);
    }
    u.search = "";
    return new FileSnapshotStore(resolve(fileURLToPath(u)), { fsync: fsync !== "false" });
  }
  if (u.protocol === "s3:") {
    if (!u.hostname) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `snapshot store URL ${JSON.stringify(url)} has no bucket (expected s3://bucket/prefix)`);
    return new S3SnapshotStore(u.hostname, decodeURIComponent(u.pathname.replace(/^\/+/, "")), opts.s3);
  }
  throw new ConfigError(ErrorCodes.CONFIG_INVALID, `snapshot store URL ${JSON.stringify(url)}: expected file:// or s3://`);
}

/**
 * Stores a workspace tar and returns the result's SnapshotRef. A stream from
 * packDir/normalizeTar already carries its file count; any other tar is run
 * through the strict validator first (which counts) so nothing unreadable
 * is ever stored.
 */
export async function persistWorkspace(
  tar: Readable,
  store: SnapshotStore,
  opts: { limits?: ArchiveLimits; signal?: AbortSignal; secrets?: Record<string, string> } = {},
): Promise<SnapshotRef> {
  const counted: ArchiveStream =
    "stats" in tar ? (tar as ArchiveStream) : validateTar(tar, opts.limits ?? { maxBytes: Number.MAX_SAFE_INTEGER, maxEntries: Number.MAX_SAFE_INTEGER, maxDepth: 1024 });
  // With secrets, the bytes go through the scanner: a tar holding a value fails with SECRET_IN_WORKSPACE and nothing is stored.
  const body = opts.secrets && Object.keys(opts.secrets).length ? scanned(counted, opts.secrets) : counted;
  const put = await store.put(body, opts.signal ? { signal: opts.signal } : {});
  return { id: put.id, bytes: put.bytes, files: counted.stats.files };
}

function scanned(tar: Readable, secrets: Record<string, string>): Readable {
  const scanner = new SecretScanner(secrets);
  tar.on("error", (err) => scanner.destroy(err));
  scanner.on("close", () => tar.destroy());
  return tar.pipe(scanner);
}

/**
 * Hydrates a snapshot: into a host directory (extractTar, strict), or into
 * whatever `target` does with a validated tar stream (a sandbox's putArchive).
 */
export async function hydrateWorkspace(
  store: SnapshotStore,
  id: string,
  target: string | ((tar: Readable) => Promise<void>),
  opts: { limits: ArchiveLimits; signal?: AbortSignal },
): Promise<ExtractStats> {
  const tar = await store.get(id);
  if (typeof target === "string") return extractTar(target, tar, { ...opts.limits, ...(opts.signal ? { signal: opts.signal } : {}) });
  const checked = validateTar(tar, opts.limits);
  try {
    await target(checked);
  } finally {
    // A target that failed without reading everything must not leave the store's stream open.
    if (!checked.readableEnded) checked.destroy();
  }
  return { files: checked.stats.files, bytes: checked.stats.bytes };
}

/** The worker pipeline's WorkspaceStore shape (worker/run-job.ts) over a snapshot store. */
export function workspaceStoreFor(store: SnapshotStore): WorkspaceStore {
  return {
    open: (id) => store.get(id),
    save: (tar, opts) => persistWorkspace(tar, store, opts),
  };
}
