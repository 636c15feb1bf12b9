/**
 * The bubblewrap command line of one exec. Pure: easy to unit-test and to
 * read as the sandbox's security policy in one place.
 */
import path from "node:path";
import { WORKSPACE_DIR } from "../provider.js";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { procMaskOps } from "./proc-mask.js";

export interface BwrapArgsInput {
  /** Root filesystem operations from image-root.ts. */
  rootOps: readonly string[];
  workspaceHostDir: string;
  /** The launcher (launch-request.ts): the job's environment and command arrive on its request FIFO, never here. */
  argv: readonly string[];
  cwd?: string;
  uid: number;
  gid: number;
  /** Size of the private /tmp, bytes (tmpfs pages are charged to the memory cgroup anyway). */
  tmpSizeBytes?: number;
  /** File descriptor bwrap reads the seccomp program from (seccomp.ts). */
  seccompFd?: number;
  /** `network: "proxy"`: the host's egress directory (CA bundle, proxy socket), bound read-only inside. */
  egress?: { hostDir: string; sandboxDir: string };
}

function invalid(message: string): ProviderError {
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, message, { retryable: false });
}

export function buildBwrapArgs(input: BwrapArgsInput): string[] {
  if (input.argv.length === 0) throw invalid("exec argv is empty");
  for (const a of input.argv) if (a.includes("\0")) throw invalid("exec argv contains a NUL byte");
  const cwd = input.cwd ?? WORKSPACE_DIR;
  if (!path.posix.isAbsolute(cwd) || cwd.includes("\0")) throw invalid(`exec cwd '${cwd}' must be an absolute path`);

  const args = [
    // Every namespace: no network but lo, own pids/ipc/hostname, uid 1000 without capabilities.
    "--unshare-user",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    // No nested user namespaces: they are the usual door to kernel attack surface.
    "--disable-userns",
    "--uid", String(input.uid),
    "--gid", String(input.gid),
    "--cap-drop", "ALL",
    "--hostname", "sandbox",
    // setsid: no TIOCSTI on the worker's terminal; die-with-parent: killing bwrap ends all.
    "--new-session",
    "--die-with-parent",
    // Nothing of the worker's environment: the launcher sets the job's own.
    "--clearenv",
  ];
  // Loaded last, just before the command runs: bwrap's own setup is not filtered.
  if (input.seccompFd !== undefined) args.push("--seccomp", String(input.seccompFd));
  args.push("--tmpfs", "/", ...input.rootOps);
  // A minimal /dev (null, zero, urandom, tty, pts...) made read-only, with a
  // private /dev/shm for POSIX shared memory (python multiprocessing locks).
  // /proc/sys and friends read-only, kernel internals hidden (proc-mask.ts says why).
  args.push("--proc", "/proc", ...procMaskOps(), "--dev", "/dev", "--remount-ro", "/dev", "--tmpfs", "/dev/shm");
  args.push(...(input.tmpSizeBytes ? ["--size", String(input.tmpSizeBytes)] : []), "--tmpfs", "/tmp");
  args.push("--bind", input.workspaceHostDir, WORKSPACE_DIR);
  // The namespace stays empty (--unshare-net above): the way out is the bridge on its loopback (egress-bridge.py).
  if (input.egress) args.push("--ro-bind", input.egress.hostDir, input.egress.sandboxDir);
  // The root tmpfs holds only mount points now; nothing may be created next to them.
  args.push("--remount-ro", "/");
  args.push("--chdir", cwd);
  args.push("--", ...input.argv);
  return args;
}
