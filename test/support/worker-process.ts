/**
 * Workers as real child processes (`node bin/sandqueue.js worker`), so tests
 * can kill -9, SIGSTOP or SIGTERM them like an operator or a crash would.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { REDIS_URL } from "./harness.js";

export const BIN = join(import.meta.dirname, "../../bin/sandqueue.js");

export interface WorkerProcess {
  proc: ChildProcess;
  pid: number;
  /** JSON log events seen so far. */
  events: Record<string, unknown>[];
  exited: Promise<number | null>;
  waitFor(event: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function spawnWorker(
  queue: string,
  env: Record<string, string> = {},
  args: string[] = [],
  entry: string[] = [BIN, "worker"],
  command = "node",
): WorkerProcess {
  const proc = spawn(command, [...entry, "--queue", queue, "--metrics-port", "0", ...args], {
    env: {
      ...process.env,
      REDIS_URL,
      SANDQUEUE_LOCK_DURATION_MS: "4000",
      SANDQUEUE_STALLED_INTERVAL_MS: "1000",
      SANDQUEUE_REAP_INTERVAL_MS: "1000",
      ...env,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const events: Record<string, unknown>[] = [];
  const listeners = new Set<() => void>();
  let buf = "";
  proc.stderr!.on("data", (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        events.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        events.push({ event: "stderr", line });
      }
      for (const l of listeners) l();
    }
  });
  const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
  const waitFor = (event: string, timeoutMs = 20_000): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const check = (): boolean => {
        const e = events.find((x) => x.event === event);
        if (e) {
          listeners.delete(l);
          clearTimeout(timer);
          resolve(e);
        }
        return Boolean(e);
      };
      const l = (): void => void check();
      const timer = setTimeout(() => {
        listeners.delete(l);
        reject(new Error(`worker ${proc.pid} logged no ${event} within ${timeoutMs} ms; last: ${JSON.stringify(events.slice(-3))}`));
      }, timeoutMs);
      listeners.add(l);
      check();
    });
  return {
    proc,
    pid: proc.pid!,
    events,
    exited,
    waitFor,
    stop: async (signal = "SIGKILL") => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}
