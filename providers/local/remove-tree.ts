/**
 * Removes a directory tree at any depth: a sandbox's directory, whatever its
 * job left in the workspace.
 *
 * Why not fs.rm: it names every entry by its full host path, and the host
 * path of a workspace is longer than the path the job sees, so a chain of
 * directories the job built up to its own PATH_MAX (4096 bytes) fails with
 * ENAMETOOLONG on the host, and the tree, with its tmpfs pages, stays for
 * good.
 *
 * Node has no openat/unlinkat; `/proc/self/fd/<fd>/<name>` is their
 * equivalent: every path given to the kernel is one open directory plus one
 * name (raw bytes), short at any depth. Nothing is followed: files and
 * symlinks are unlinked, directories opened with O_NOFOLLOW.
 *
 * One directory fd is open at a time, so a chain deeper than the fd limit
 * goes too. Going back up opens `..` and checks it is the directory we came
 * down from (device and inode); a directory on another filesystem (a mount
 * point) is never entered. Either one fails loudly instead of removing
 * something else. Each directory is read once.
 *
 * Synchronous calls in slices: a small tree (the common job) goes in one
 * slice with no thread-pool round trips; a large one yields to the event loop
 * every `sliceMs`.
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, rmdirSync, unlinkSync, type Dirent } from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { ErrorCodes, ProviderError } from "../../errors/index.js";

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
const SLASH = Buffer.from("/");

/** A directory being emptied: its identity and the entries not removed yet. */
interface Level {
  dev: number;
  ino: number;
  /** Name in its parent (empty for the root). */
  name: Buffer;
  entries: Dirent<Buffer>[];
}

export interface RemoveTreeOptions {
  /** Longest stretch of synchronous work before yielding to the event loop, ms. */
  sliceMs?: number;
}

function fdPath(fd: number, name: Buffer | string): Buffer {
  return Buffer.concat([Buffer.from(`/proc/self/fd/${fd}`), SLASH, typeof name === "string" ? Buffer.from(name) : name]);
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

/** A failed call by its errno (its message would repeat the path); a check of ours by its message. */
function reason(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.syscall && e.code ? e.code : e.message;
}

/**
 * Removes `root` and everything below it; a missing root is not an error, a
 * root that is not a directory (file, symlink) is unlinked. Throws
 * PROVIDER_FAILED (retryable) naming the depth and the failed call.
 */
export async function removeTree(root: string, opts: RemoveTreeOptions = {}): Promise<void> {
  const sliceMs = opts.sliceMs ?? 1;
  let fd: number;
  try {
    fd = openSync(root, DIR_FLAGS);
  } catch (err) {
    const code = errno(err);
    if (code === "ENOENT") return;
    if (code !== "ENOTDIR" && code !== "ELOOP") throw failed(root, 0, "open", err);
    try {
      unlinkSync(root);
      return;
    } catch (e) {
      if (errno(e) === "ENOENT") return;
      throw failed(root, 0, "unlink", e);
    }
  }
  // Every fd below is this one variable: one place closes it, exactly once.
  const ancestors: Level[] = [];
  let step = "fstat";
  try {
    const rootStat = fstatSync(fd);
    step = "readdir";
    let level: Level = { dev: rootStat.dev, ino: rootStat.ino, name: Buffer.alloc(0), entries: readdirSync(`/proc/self/fd/${fd}`, { withFileTypes: true, encoding: "buffer" }) };
    let sliceStart = performance.now();
    for (;;) {
      if (performance.now() - sliceStart >= sliceMs) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        sliceStart = performance.now();
      }
      const entry = level.entries.pop();
      if (entry) {
        const target = fdPath(fd, entry.name);
        if (!(entry.isDirectory() || (isUnknown(entry) && lstatSync(target).isDirectory()))) {
          step = "unlink";
          try {
            unlinkSync(target);
          } catch (err) {
            if (errno(err) !== "ENOENT") throw err;
          }
          continue;
        }
        step = "open";
        const child = openSync(target, DIR_FLAGS);
        const st = fstatSync(child);
        closeSync(fd);
        fd = child;
        if (st.dev !== rootStat.dev) {
          step = "stay on one filesystem";
          throw new Error("a mount point inside the tree is not entered");
        }
        ancestors.push(level);
        step = "readdir";
        level = { dev: st.dev, ino: st.ino, name: entry.name, entries: readdirSync(`/proc/self/fd/${fd}`, { withFileTypes: true, encoding: "buffer" }) };
        continue;
      }
      const parent = ancestors.pop();
      if (!parent) break;
      step = "open ..";
      const up = openSync(fdPath(fd, ".."), DIR_FLAGS);
      closeSync(fd);
      fd = up;
      const st = fstatSync(fd);
      if (st.dev !== parent.dev || st.ino !== parent.ino) {
        step = "return to the parent";
        throw new Error("'..' is not the directory it came from: the tree changed while it was being removed");
      }
      step = "rmdir";
      rmdirSync(fdPath(fd, level.name));
      level = parent;
    }
  } catch (err) {
    throw failed(root, ancestors.length + 1, step, err);
  } finally {
    closeSync(fd);
  }
  try {
    rmdirSync(root);
  } catch (err) {
    if (errno(err) !== "ENOENT") throw failed(root, 0, "rmdir", err);
  }
}

/** Filesystems that do not report types in readdir: lstat tells (tmpfs always reports them). */
function isUnknown(e: Dirent<Buffer>): boolean {
  return !(e.isFile() || e.isDirectory() || e.isSymbolicLink() || e.isFIFO() || e.isSocket() || e.isCharacterDevice() || e.isBlockDevice());
}

function failed(root: string, depth: number, step: string, err: unknown): ProviderError {
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `could not remove ${root}: ${step} failed at depth ${depth} (${reason(err)})`, {
    retryable: true,
    cause: err,
  });
}

/**
 * Removes a sandbox's directory. An empty workspace (most one-shot jobs)
 * leaves only files of ours there: a few direct calls, half the cost of the
 * walk. Anything else, or any surprise, goes through removeTree.
 */
export async function removeSandboxDir(sandboxDir: string, workspaceHostDir: string): Promise<void> {
  try {
    if (readdirSync(workspaceHostDir).length === 0) {
      rmdirSync(workspaceHostDir);
      for (const name of readdirSync(sandboxDir)) unlinkSync(path.join(sandboxDir, name));
      rmdirSync(sandboxDir);
      return;
    }
  } catch {
    // fall through to the walk
  }
  await removeTree(sandboxDir);
}
