/**
 * The way from a local sandbox with `network: "proxy"` to the worker's
 * egress proxy. The sandbox keeps its own empty network namespace; each exec
 * (a fresh bwrap, so a fresh namespace) gets a bridge (egress-bridge.py)
 * listening on 127.0.0.1:EGRESS_PORT inside that namespace and carrying
 * connections to the proxy's unix socket in the sandbox's host egress
 * directory. The bridge is started by the spawn helper on the host: outside
 * the sandbox's pid namespace and cgroup, so the job cannot signal it and its
 * memory and pids are not the job's; it exits with bwrap.
 */
import { constants as fsConstants, openSync, unlinkSync } from "node:fs";
import net from "node:net";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { helperPath, type Spawner, type SpawnedProcess } from "./spawner.js";

/** Where the sandbox sees its egress directory (CA bundle, proxy socket); a top-level name no image uses. */
export const EGRESS_SANDBOX_DIR = "/sandqueue-egress";
/** The proxy port on the sandbox's own loopback (nothing else listens there). */
export const EGRESS_PORT = 3128;
export const EGRESS_PROXY_URL = `http://127.0.0.1:${EGRESS_PORT}`;

/** Long enough for python's start-up on a loaded machine; bwrap's setup is far quicker. */
const READY_TIMEOUT_MS = 15_000;

export interface BridgeRequest {
  /** bwrap's monitor: the bridge finds the sandbox's pid 1 among its children. */
  bwrapPid: number;
  /** The exec's cgroup.procs, where that child is (saves a walk of /proc). */
  procsFile: string | undefined;
  /** The proxy's socket for this sandbox. */
  socketPath: string;
  /** A FIFO path for the bridge's "ready" (or its reason to fail); removed before this returns. */
  statusFifo: string;
}

/** Starts the bridge and waits until it listens inside the sandbox's namespace. */
export async function startBridge(spawner: Spawner, req: BridgeRequest): Promise<SpawnedProcess> {
  const args = [String(req.bwrapPid), String(EGRESS_PORT), req.socketPath];
  if (req.procsFile) args.push(req.procsFile);
  // A fork of the spawn helper, which has the interpreter running already: no python start per exec.
  const proc = await spawner.start({
    module: helperPath("egress-bridge.py"),
    args,
    mkfifo: [req.statusFifo],
    fds: [
      [0, "/dev/null", "r"],
      [1, req.statusFifo, "rw"],
      [2, req.statusFifo, "rw"],
    ],
  });
  let status: net.Socket | undefined;
  try {
    // The bridge holds the FIFO read-write for its whole life: nothing it wrote is lost before we open
    // it. A bridge that exits first takes the pipe with it (no end-of-file for us): its exit is watched too.
    status = new net.Socket({ fd: openSync(req.statusFifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK), readable: true, writable: false });
    await waitReady(status, proc);
    return proc;
  } catch (err) {
    await stopBridge(proc);
    throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `could not bridge the sandbox to the egress proxy: ${(err as Error).message}`, {
      retryable: true,
      cause: err,
    });
  } finally {
    status?.destroy();
    try {
      unlinkSync(req.statusFifo);
    } catch {
      // already gone
    }
  }
}

function waitReady(status: net.Socket, proc: SpawnedProcess): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let text = "";
    const timer = setTimeout(() => done(new Error(`no answer from the bridge in ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
    const done = (err?: Error): void => {
      clearTimeout(timer);
      status.removeAllListeners("data");
      if (err) reject(err);
      else resolve();
    };
    status.on("error", () => undefined);
    status.on("data", (chunk: Buffer) => {
      text += chunk.toString("utf8");
      if (text.startsWith("ready\n")) done();
      else if (text.length > 4096) done(new Error(text.slice(0, 4096)));
    });
    // Everything it wrote has arrived by the time the FIFO reads end-of-file after its exit.
    status.once("end", () => done(new Error(text.trim() || "the bridge exited")));
    void proc.exited.then((s) => {
      if (!text.startsWith("ready\n")) setTimeout(() => done(new Error(text.trim() || `the bridge exited (${s.signal ?? s.code})`)), 50);
    });
  });
}

/** Ends a bridge (idempotent). Its pid is the spawn helper's unreaped child until it has exited: never another process's. */
export async function stopBridge(proc: SpawnedProcess): Promise<void> {
  if (!proc.hasExited) {
    try {
      process.kill(proc.pid, "SIGKILL");
    } catch {
      // exited meanwhile
    }
  }
  await proc.exited;
}
