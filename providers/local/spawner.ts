/**
 * Client of spawner.py, the small process that starts every bwrap of the
 * local provider. The worker itself never forks per job: Node's spawn()
 * copies the worker's page tables (~5 ms of blocked event loop at 100 MiB),
 * the helper's posix_spawn costs a fraction of that, off the event loop.
 *
 * Children talk to the worker through FIFOs in the sandbox directory (the
 * helper creates and hands them over), and the helper reports each child's
 * exit status. One helper per provider, started on first use and restarted
 * if it dies (whatever it was running is then reported as failed).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import type { ExecCgroup } from "./cgroups.js";

export type SpawnRequest = SpawnCommon & (
  | {
      /** argv[0] must be an absolute path (no PATH lookup). */
      argv: string[];
    }
  | {
      /**
       * A Python module run by a fork of the helper itself: `main(args)` of
       * the file at this path (no interpreter start; the egress bridge).
       */
      module: string;
      args: string[];
    }
);

interface SpawnCommon {
  /** FIFOs the helper creates (mode 0600) before starting the process. */
  mkfifo: string[];
  /** [target fd, path, mode]: 0, 1 and 2 must be among them. */
  fds: Array<[number, string, "r" | "rw"]>;
  /** Starts the process inside this cgroup, and reports its OOM events on v1 (see ExecCgroup.join). */
  cgroup?: ExecCgroup["join"];
  /** Niceness the process starts with (0 when absent). */
  nice?: number;
}

export interface ExitStatus {
  code: number | null;
  signal: number | null;
}

export interface SpawnedProcess {
  pid: number;
  /** Resolves when the process has exited and been reaped (never rejects). */
  exited: Promise<ExitStatus>;
  /** True once `exited` has resolved. */
  readonly hasExited: boolean;
  /** Resolves on the first OOM event the helper reports for it (cgroup v1 requests with `cgroup.oom`); may never resolve. */
  oom: Promise<void>;
}

interface Pending {
  started: (pid: number) => void;
  failed: (err: Error) => void;
  exited?: (s: ExitStatus) => void;
  oom?: () => void;
}

/** Python helpers (spawner.py, egress-bridge.py) sit next to this module in the sources; dist/ has only the compiled JS. */
export function helperPath(name = "spawner.py"): string {
  const candidates = [new URL(`./${name}`, import.meta.url), new URL(`../../../providers/local/${name}`, import.meta.url)].map((u) => fileURLToPath(u));
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `helper ${name} not found (looked at ${candidates.join(", ")})`, { retryable: false });
  return found;
}

export class Spawner {
  private child: ChildProcess | null = null;
  private readonly pending = new Map<string, Pending>();
  private seq = 0;
  private closed = false;

  /** `python`: the interpreter of the helpers (this one and the egress bridge). */
  constructor(readonly python: string) {}

  /** Starts the helper now (python's start-up is ~0.1 s: better at worker start than in the first job). */
  warmUp(): void {
    if (!this.closed) this.ensure();
  }

  private ensure(): ChildProcess {
    if (this.closed) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "local provider is closed", { retryable: true });
    if (this.child) return this.child;
    // -I: isolated (no user site, no PYTHON* variables); -u: unbuffered lines.
    const child = spawn(this.python, ["-I", "-u", helperPath()], { stdio: ["pipe", "pipe", "inherit"], env: {} });
    this.child = child;
    child.stdin!.on("error", () => undefined);
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => this.onMessage(line));
    child.once("exit", (code, signal) => {
      if (this.child === child) this.child = null;
      const err = new ProviderError(ErrorCodes.PROVIDER_FAILED, `spawn helper exited (${signal ?? code})`, { retryable: true });
      for (const [id, p] of this.pending) {
        this.pending.delete(id);
        p.failed(err);
        p.exited?.({ code: null, signal: null });
      }
    });
    child.once("error", () => undefined); // followed by 'exit' or reported by the write below
    return child;
  }

  private onMessage(line: string): void {
    let msg: { op: string; id: string; pid?: number; code?: number | null; signal?: number | null; message?: string };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      return;
    }
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.op === "started") p.started(msg.pid!);
    else if (msg.op === "oom") p.oom?.();
    else if (msg.op === "error") {
      this.pending.delete(msg.id);
      p.failed(new ProviderError(ErrorCodes.PROVIDER_FAILED, `could not start bwrap: ${msg.message}`, { retryable: true }));
    } else if (msg.op === "exit") {
      this.pending.delete(msg.id);
      p.exited?.({ code: msg.code ?? null, signal: msg.signal ?? null });
    }
  }

  start(req: SpawnRequest): Promise<SpawnedProcess> {
    const child = this.ensure();
    const id = String(++this.seq);
    return new Promise<SpawnedProcess>((resolve, reject) => {
      let done = false;
      let resolveExit!: (s: ExitStatus) => void;
      const exited = new Promise<ExitStatus>((r) => (resolveExit = r));
      let resolveOom!: () => void;
      const oom = new Promise<void>((r) => (resolveOom = r));
      const entry: Pending = {
        oom: () => resolveOom(),
        started: (pid) => {
          const proc = { pid, exited, hasExited: false, oom };
          void exited.then(() => (proc.hasExited = true));
          entry.exited = resolveExit;
          done = true;
          resolve(proc);
        },
        failed: (err) => {
          if (!done) reject(err);
        },
      };
      this.pending.set(id, entry);
      child.stdin!.write(`${JSON.stringify({ op: "start", id, ...req })}\n`);
    });
  }

  /** Stops the helper; its children are SIGKILLed by it. */
  close(): void {
    this.closed = true;
    this.child?.stdin?.end();
    this.child = null;
  }
}
