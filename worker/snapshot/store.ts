/**
 * Snapshot stores: content-addressed tar objects.
 *
 * The id is "sha256:" + the hex SHA-256 of the tar bytes, computed while
 * streaming, so identical workspaces are stored once. Writes are atomic: a
 * reader sees a whole object or none, and a crash mid-write leaves nothing
 * under a snapshot id (only temp data that prune removes).
 */
import type { Readable } from "node:stream";
import { ErrorCodes, SnapshotError } from "../../errors/index.js";
import { parseDuration } from "../duration.js";

export const SNAPSHOT_ID_RE = /^sha256:([0-9a-f]{64})$/;

export interface SnapshotInfo {
  id: string;
  bytes: number;
  createdAt: Date;
}

export interface PutResult {
  id: string;
  bytes: number;
}

export interface SnapshotStore {
  /** Stores a tar, hashing while it streams. Storing existing content again is cheap and returns the same id. */
  put(tar: Readable, opts?: { signal?: AbortSignal }): Promise<PutResult>;
  /** Streams a snapshot; SNAPSHOT_NOT_FOUND when there is none. The stream fails if the bytes do not hash to the id. */
  get(id: string): Promise<Readable>;
  has(id: string): Promise<boolean>;
  list(): Promise<SnapshotInfo[]>;
  /** True when something was removed. */
  remove(id: string): Promise<boolean>;
  /** Removes snapshots (and abandoned temp data) older than `olderThanMs`; returns how many snapshots. */
  prune(olderThanMs: number): Promise<number>;
  /** Idempotent. */
  close(): Promise<void>;
}

export function hexOf(id: string): string {
  const m = SNAPSHOT_ID_RE.exec(id);
  if (!m) {
    throw new SnapshotError(ErrorCodes.SNAPSHOT_NOT_FOUND, `${JSON.stringify(id.slice(0, 80))} is not a snapshot id (sha256:<64 hex>)`, {
      retryable: false,
    });
  }
  return m[1]!;
}

export function notFound(id: string): SnapshotError {
  return new SnapshotError(ErrorCodes.SNAPSHOT_NOT_FOUND, `snapshot ${id} not found`, { retryable: false, details: { id } });
}

/** A stored object whose bytes do not hash to its id (damaged storage): never retried, never served. */
export function corruptSnapshot(id: string, got: string | null): SnapshotError {
  return new SnapshotError(ErrorCodes.SNAPSHOT_STORE, `snapshot ${id} is corrupt in the store (content hashes to ${got})`, { retryable: false });
}

export function storeError(message: string, cause: unknown, retryable = true): SnapshotError {
  const detail = cause instanceof Error ? `: ${cause.message}` : "";
  return new SnapshotError(ErrorCodes.SNAPSHOT_STORE, `${message}${detail}`, { retryable, cause });
}

/** Counts and hashes what flows through it. */
/** A snapshot age or retention ("12h", "7d"); a bare number is milliseconds. Null when invalid. */
export function parseDurationMs(s: string): number | null {
  return parseDuration(s, "ms");
}

/**
 * The part of `prune` every store shares: removes snapshots created before
 * `now - olderThanMs`; returns how many. Stores then clean their own temp data.
 */
export async function removeSnapshotsOlderThan(store: Pick<SnapshotStore, "list" | "remove">, olderThanMs: number): Promise<number> {
  const cutoff = Date.now() - olderThanMs;
  let removed = 0;
  for (const s of await store.list()) {
    if (s.createdAt.getTime() < cutoff && (await store.remove(s.id))) removed++;
  }
  return removed;
}
