/**
 * `network: "proxy"` on the docker provider, for an engine on this host.
 * The container keeps NetworkMode "none" (its own namespace, loopback only);
 * a per-sandbox host directory is bound read-only at /sandqueue-egress (CA
 * bundle, the proxy's socket), and the local provider's bridge
 * (providers/local/egress-bridge.py, `--pid` form) listens on
 * 127.0.0.1:3128 inside the container's namespace, entered through its
 * init's /proc/<pid>/ns/net, carrying each connection to that socket. The
 * bridge runs on the host, outside the container: the job cannot signal
 * it, and it exits with the container's init (or with the worker).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { readdir, rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { EGRESS_SOCKET } from "../provider.js";
import { EGRESS_PORT } from "../local/egress-bridge.js";
import { helperPath } from "../local/spawner.js";

const SYSTEM_PYTHON = "/usr/bin/python3";
const READY_TIMEOUT_MS = 15_000;
const DIR_NAME = /^sq-(\d+)-[0-9a-f]{12}$/;

/** A fresh egress directory under `root`, named after this process (reap finds those of dead workers). */
export function makeEgressDir(root: string): string {
  mkdirSync(root, { recursive: true, mode: 0o755 });
  const dir = path.join(root, `sq-${process.pid}-${randomBytes(6).toString("hex")}`);
  mkdirSync(dir, { mode: 0o755 });
  return dir;
}

/** Removes egress directories whose worker process is gone; returns how many. */
export async function reapEgressDirs(root: string): Promise<number> {
  let n = 0;
  for (const name of await readdir(root).catch(() => [] as string[])) {
    const m = DIR_NAME.exec(name);
    if (!m || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
    await rm(path.join(root, name), { recursive: true, force: true });
    n++;
  }
  return n;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Starts the bridge into the namespace of `initPid` (the container's init) and waits until it listens. */
export async function startContainerBridge(initPid: number, egressDir: string): Promise<ChildProcess> {
  const python = existsSync(SYSTEM_PYTHON) ? SYSTEM_PYTHON : "python3";
  const child = spawn(python, ["-I", helperPath("egress-bridge.py"), "--pid", String(initPid), String(EGRESS_PORT), path.join(egressDir, EGRESS_SOCKET)], {
    stdio: ["ignore", "pipe", "pipe"],
    env: {},
  });
  try {
    await new Promise<void>((resolve, reject) => {
      let text = "";
      const timer = setTimeout(() => reject(new Error(`no answer from the bridge in ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
      const onData = (chunk: Buffer): void => {
        text += chunk.toString("utf8");
        if (text.startsWith("ready\n")) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout!.on("data", onData);
      child.stderr!.on("data", onData);
      child.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(text.trim() || `the bridge exited (${signal ?? code})`));
      });
    });
  } catch (err) {
    child.kill("SIGKILL");
    throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `could not bridge the container to the egress proxy: ${(err as Error).message}`, {
      retryable: true,
      cause: err,
    });
  }
  // It writes nothing more; not reading keeps no pipe full.
  child.stdout!.destroy();
  child.stderr!.destroy();
  child.removeAllListeners("exit");
  child.unref();
  return child;
}

export async function stopContainerBridge(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGKILL");
  await exited;
}
