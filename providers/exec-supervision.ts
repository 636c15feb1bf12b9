/**
 * One exec's supervision, shared by every provider: the wall-time timer, the
 * abort wiring, capped output capture, which limit ended the run (one
 * precedence for all), and the result. A provider drives it with its own
 * kill (which must take the whole process tree) and its own limit evidence
 * (cgroup counters, OOM events, a pod's termination reason).
 */
import { constants as osConstants } from "node:os";
import type { Readable } from "node:stream";
import type { ExecLimitHit, ExecRequest, ExecResult } from "./provider.js";

/** Order in which simultaneous limit hits are reported: the cause a user can act on first. */
export const LIMIT_PRECEDENCE: readonly ExecLimitHit[] = ["aborted", "timeout", "output", "memory", "pids"];

const SIGNAL_NAMES = new Map<number, string>(Object.entries(osConstants.signals).map(([name, n]) => [n, name]));

/**
 * Capped capture of one output stream: holds at most `maxBytes` whatever the
 * sandbox writes; the first byte past the cap calls `onOverflow` once and the
 * rest is dropped (a stream keeps being drained so its pipe never blocks).
 * Bytes are copied at the cap, so no view keeps a large chunk alive.
 */
export class OutputCapture {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private overflowed = false;
  /** Resolves when an attached stream has ended (at once when none is attached). */
  readonly done: Promise<void>;

  constructor(
    private readonly maxBytes: number,
    private readonly onOverflow: () => void,
    stream?: Readable,
    /** Sees every kept chunk as it arrives (live relays). */
    private readonly onKept?: (chunk: Buffer) => void,
  ) {
    this.done = stream
      ? new Promise<void>((resolve) => {
          stream.on("data", (chunk: Buffer) => this.push(chunk));
          // 'close' also fires after an error; a broken pipe is just the end of output.
          stream.on("close", () => resolve());
          stream.on("error", () => resolve());
        })
      : Promise.resolve();
  }

  push(chunk: Buffer): void {
    if (this.overflowed) return;
    const room = this.maxBytes - this.size;
    if (chunk.length <= room) {
      this.chunks.push(chunk);
      this.size += chunk.length;
      this.onKept?.(chunk);
      return;
    }
    if (room > 0) {
      const kept = Buffer.from(chunk.subarray(0, room));
      this.chunks.push(kept);
      this.onKept?.(kept);
    }
    this.size = this.maxBytes;
    this.overflowed = true;
    this.onOverflow();
  }

  get truncated(): boolean {
    return this.overflowed;
  }

  get bytes(): Buffer {
    return Buffer.concat(this.chunks, this.size);
  }
}

export interface SupervisionOptions {
  /** Kills the exec's whole process tree (or the sandbox); called once, for the first limit hit. */
  kill: (why: ExecLimitHit) => void;
  /** Further signals that end the exec as "aborted" (the sandbox being released). */
  abortSignals?: AbortSignal[];
  /** Attach these streams as stdout/stderr instead of pushing chunks by hand. */
  streams?: { stdout?: Readable; stderr?: Readable };
}

export class ExecSupervision {
  readonly stdout: OutputCapture;
  readonly stderr: OutputCapture;
  private readonly hits = new Set<ExecLimitHit>();
  private killSent = false;
  private readonly startedAt = performance.now();
  private readonly timer: NodeJS.Timeout;
  private readonly signals: AbortSignal[];
  private readonly onAbort = (): void => this.hit("aborted");

  constructor(
    private readonly req: ExecRequest,
    private readonly opts: SupervisionOptions,
  ) {
    const relay = req.onOutput;
    this.stdout = new OutputCapture(req.maxOutputBytes, () => this.hit("output"), opts.streams?.stdout, relay && ((c) => relay("stdout", c)));
    this.stderr = new OutputCapture(req.maxOutputBytes, () => this.hit("output"), opts.streams?.stderr, relay && ((c) => relay("stderr", c)));
    this.timer = setTimeout(() => this.hit("timeout"), req.timeoutMs);
    this.signals = [req.signal, ...(opts.abortSignals ?? [])].filter((s): s is AbortSignal => s !== undefined);
    for (const s of this.signals) {
      if (s.aborted) queueMicrotask(this.onAbort);
      else s.addEventListener("abort", this.onAbort, { once: true });
    }
  }

  /** Records a limit hit; the first one sends the provider's kill. */
  hit(why: ExecLimitHit): void {
    this.hits.add(why);
    if (this.killSent) return;
    this.killSent = true;
    this.opts.kill(why);
  }

  /** Records evidence found after the fact (a cgroup counter) without killing. */
  note(why: ExecLimitHit): void {
    this.hits.add(why);
  }

  /** Whether the provider was asked to kill this exec. */
  get killed(): boolean {
    return this.killSent;
  }

  get limitHit(): ExecLimitHit | null {
    return LIMIT_PRECEDENCE.find((l) => this.hits.has(l)) ?? null;
  }

  /** Stops the timer and the abort listeners (idempotent); call before reading evidence afterwards. */
  stop(): void {
    clearTimeout(this.timer);
    for (const s of this.signals) s.removeEventListener("abort", this.onAbort);
  }

  /**
   * The result from the process's own end. A run we killed reports the kill
   * (SIGKILL), whatever status the tree's leader left. A limit seen only
   * afterwards keeps the exit status, except that a 128+n status then means
   * death by signal n (the kernel's OOM kill shows as 137).
   */
  result(end: { exitCode: number | null; signal: string | null }): ExecResult {
    this.stop();
    let { exitCode, signal } = end;
    const limitHit = this.limitHit;
    if (this.killSent) {
      exitCode = null;
      signal = "SIGKILL";
    } else if (limitHit !== null && limitHit !== "pids" && exitCode !== null && exitCode > 128 && exitCode < 128 + 65) {
      const name = SIGNAL_NAMES.get(exitCode - 128);
      if (name) {
        signal = name;
        exitCode = null;
      }
    }
    return {
      exitCode,
      signal,
      stdout: this.stdout.bytes,
      stderr: this.stderr.bytes,
      stdoutTruncated: this.stdout.truncated,
      stderrTruncated: this.stderr.truncated,
      limitHit,
      durationMs: Math.round(performance.now() - this.startedAt),
    };
  }
}

/** A result for an exec that never started (aborted before anything ran). */
export function notRunResult(startedAt = performance.now()): ExecResult {
  return {
    exitCode: null,
    signal: null,
    stdout: Buffer.alloc(0),
    stderr: Buffer.alloc(0),
    stdoutTruncated: false,
    stderrTruncated: false,
    limitHit: "aborted",
    durationMs: Math.round(performance.now() - startedAt),
  };
}
