/**
 * Workspace quota of the local provider: one tmpfs mounted over the
 * provider's work root.
 *
 * A plain host directory as /workspace lets one job fill the host's disk (or
 * its inodes). On a tmpfs, every page a sandbox writes is charged to the
 * memory cgroup of the writing process, so a sandbox's workspace, its /tmp
 * and its processes together stay within its own `memoryMb` (the kernel
 * OOM-kills the writer: the job ends `killed`/`memory`), and the host disk
 * is never touched. The tmpfs `size` is only a machine-wide backstop.
 *
 * Why not one mount per sandbox: that is a mount(8) spawn per acquire and a
 * umount per release (several ms each) for no extra protection, since the
 * per-sandbox bound comes from the cgroup anyway.
 *
 * Several workers may start at once on one work root: check-and-mount runs
 * under flock(1) on the directory, so exactly one mounts and the others find
 * the tmpfs (stacked mounts would hide the first worker's files). A lock
 * taken on the directory before the mount and one taken on the tmpfs root
 * after it differ, but whoever gets the second kind sees the mount already.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync, realpathSync } from "node:fs";
import { ErrorCodes, ProviderError } from "../../errors/index.js";

export interface WorkRootMountOptions {
  /** Machine-wide cap of the tmpfs, MiB (default: the kernel's, half of RAM). */
  sizeMb?: number;
  /** For tests: an alternative mount table. */
  mountInfoFile?: string;
}

export interface WorkRootMount {
  /** The directory (resolved) that is a tmpfs mount point. */
  readonly dir: string;
  /** True when this call mounted it (and close() may unmount it). */
  readonly mountedHere: boolean;
  /**
   * Unmounts the tmpfs if this instance mounted it and nothing is left in
   * it (another provider on the same work root may still use it). Idempotent.
   */
  close(): void;
}

/** /proc/self/mountinfo escapes space, tab, newline and backslash as octal. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The filesystem type mounted exactly at `dir` (the last, topmost mount wins), or null. */
export function mountTypeAt(dir: string, mountInfoFile = "/proc/self/mountinfo"): string | null {
  let type: string | null = null;
  for (const line of readFileSync(mountInfoFile, "utf8").split("\n")) {
    if (!line) continue;
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    const fields = line.split(" ");
    const sep = fields.indexOf("-");
    if (sep < 0) continue;
    if (unescape(fields[4] ?? "") === dir) type = fields[sep + 1] ?? null;
  }
  return type;
}

/** Under the lock: mount unless the topmost mount there is a tmpfs already; says which. */
const LOCKED_MOUNT =
  '[ "$(findmnt -n -o FSTYPE -M "$1" | tail -n 1)" = tmpfs ] && { echo reused; exit 0; }; mount -t tmpfs -o "$2" sandqueue-work "$1" && echo mounted';
/** Under the lock: unmount only if still empty (another worker may have started meanwhile). */
// Lazy: flock itself holds the directory open while the umount runs.
const LOCKED_UMOUNT = '[ -z "$(ls -A "$1")" ] && umount -l "$1"';

function unavailable(message: string, cause?: unknown): ProviderError {
  return new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, message, { retryable: false, cause });
}

/**
 * Makes `dir` (which must exist) a tmpfs mount point unless it already is
 * one. Synchronous: runs once, from the provider's constructor.
 */
export function mountWorkRootTmpfs(dir: string, opts: WorkRootMountOptions = {}): WorkRootMount {
  const real = realpathSync(dir);
  if (mountTypeAt(real, opts.mountInfoFile) === "tmpfs") return { dir: real, mountedHere: false, close: () => undefined };
  if (opts.sizeMb !== undefined && !(Number.isInteger(opts.sizeMb) && opts.sizeMb > 0)) {
    throw unavailable(`workspace tmpfs size must be a positive integer of MiB (got ${opts.sizeMb})`);
  }
  // nosuid,nodev: a planted setuid binary or device node means nothing here.
  const options = ["mode=0700", "nosuid", "nodev", ...(opts.sizeMb ? [`size=${opts.sizeMb}m`] : [])].join(",");
  let outcome: string;
  try {
    outcome = execFileSync("flock", [real, "sh", "-c", LOCKED_MOUNT, "sandqueue-mount", real, options], {
      stdio: ["ignore", "pipe", "pipe"],
      encoding: "utf8",
    }).trim();
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw unavailable(
      `cannot mount the workspace tmpfs on ${real} (${stderr || (err as Error).message}); the local provider needs root ` +
        "(CAP_SYS_ADMIN) for it, or mount a tmpfs there yourself, or pass workspaceTmpfs: false to accept unbounded host-disk workspaces",
      err,
    );
  }
  if (outcome === "reused") return { dir: real, mountedHere: false, close: () => undefined };
  let closed = false;
  return {
    dir: real,
    mountedHere: true,
    close() {
      if (closed) return;
      closed = true;
      let entries: string[];
      try {
        entries = readdirSync(real);
      } catch {
        return;
      }
      if (entries.length > 0 || mountTypeAt(real, opts.mountInfoFile) !== "tmpfs") return;
      try {
        execFileSync("flock", [real, "sh", "-c", LOCKED_UMOUNT, "sandqueue-umount", real], { stdio: "ignore" });
      } catch {
        // Busy or already gone: an empty tmpfs left mounted costs nothing.
      }
    },
  };
}
