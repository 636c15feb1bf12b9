/**
 * Translates a sandbox path under /workspace into the host directory behind it.
 *
 * The workspace is writable by sandbox code, which may have planted symlinks
 * (`/workspace/out -> /etc`). Following one on the host would read or write
 * host files as root, so every component is lstat'ed and a symlink refuses.
 */
import { lstat, mkdir } from "node:fs/promises";
import path from "node:path";
import { WORKSPACE_DIR } from "../provider.js";
import { ErrorCodes, ProviderError, SnapshotError } from "../../errors/index.js";

/** Relative segments of `dir` below /workspace; throws when it is elsewhere. */
export function workspaceSegments(dir: string): string[] {
  if (dir.includes("\0")) throw outside(dir, "contains a NUL byte");
  if (!path.posix.isAbsolute(dir)) throw outside(dir, `is not absolute (expected a path under ${WORKSPACE_DIR})`);
  const raw = dir.split("/").filter((s) => s !== "" && s !== ".");
  if (raw.includes("..")) throw outside(dir, "contains '..'");
  if (raw[0] !== WORKSPACE_DIR.slice(1)) throw outside(dir, `is not under ${WORKSPACE_DIR}`);
  return raw.slice(1);
}

function outside(dir: string, why: string): ProviderError {
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox path '${dir}' ${why}`, { retryable: false });
}

/**
 * Host path of `dir`; with `create`, missing directories are made (as for an
 * extraction target). Refuses symlinks and non-directories on the way.
 */
export async function hostDirFor(workspaceHostDir: string, dir: string, create: boolean): Promise<string> {
  let current = workspaceHostDir;
  for (const seg of workspaceSegments(dir)) {
    current = path.join(current, seg);
    let st;
    try {
      st = await lstat(current);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      if (!create) {
        throw outside(dir, "does not exist");
      }
      await mkdir(current, { mode: 0o755 });
      continue;
    }
    if (st.isSymbolicLink()) {
      throw new SnapshotError(ErrorCodes.TAR_THROUGH_SYMLINK, `sandbox path '${dir}' goes through a symlink ('${seg}'); refused`, {
        retryable: false,
      });
    }
    if (!st.isDirectory()) throw outside(dir, `is not a directory ('${seg}')`);
  }
  return current;
}
