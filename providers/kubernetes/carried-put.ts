/**
 * Archives put into /workspace ride along with the sandbox's next exec
 * instead of paying an exec (a process start in the pod, a connection)
 * of their own: a job's files and workspace cost next to nothing then.
 *
 * putArchive validates the whole archive on the worker first (so a bad
 * archive fails putArchive, before a byte goes out) and keeps it when it
 * is small; the next exec sends the kept archives on stdin after the
 * environment, and its command (pod-exec.ts RUN_CARRYING) extracts them,
 * prints a random mark on stdout and only then runs the job. Output
 * before the mark is the extraction's (tar's diagnostics go to stdout, so
 * the two streams need no ordering); a status with no mark before it is
 * the extraction's failure, reported as the put's error, never as the
 * job's exit code. Whatever needs the files without an exec first
 * (getArchive, a put into another directory) flushes them in an exec of
 * their own.
 */
import { randomBytes } from "node:crypto";
import { PassThrough, type Readable } from "node:stream";
import { WORKSPACE_DIR } from "../provider.js";
import type { CarriedArgs } from "./pod-exec.js";

/** Archives up to this size ride along (they are held in memory until the exec). */
export const CARRY_MAX_BYTES = 1 << 20;
/** Diagnostics of a failed extraction kept for its error. */
const DIAG_BYTES = 4096;

/** Validated archives waiting for the sandbox's next exec, in put order. */
export class CarriedPuts {
  private archives: Buffer[] = [];
  /** The directory as the first waiting put named it (for its error). */
  private dir = WORKSPACE_DIR;

  add(dir: string, archive: Buffer): void {
    if (this.archives.length === 0) this.dir = dir;
    this.archives.push(archive);
  }

  /** Takes what waits (null when nothing does); `restore` puts it back when the exec never started. */
  take(): Carried | null {
    if (this.archives.length === 0) return null;
    const carried = new Carried(this.dir, this.archives);
    this.archives = [];
    return carried;
  }

  restore(c: Carried): void {
    this.archives = [...c.archives, ...this.archives];
    this.dir = c.dir;
  }

  clear(): void {
    this.archives = [];
  }
}

/** The archives one exec carries, and the mark that ends their part of its stdout. */
export class Carried {
  readonly mark = `sandqueue-files-in-${randomBytes(12).toString("hex")}`;

  constructor(
    readonly dir: string,
    readonly archives: readonly Buffer[],
  ) {}

  /**
   * Their part of the command. `lastToEnd`: nothing follows them on stdin
   * (v5, no stdin for the job), so the last one is read to the end by tar
   * alone, without `head -c`.
   */
  args(lastToEnd: boolean): CarriedArgs {
    const sizes = this.archives.map((a) => String(a.length));
    if (lastToEnd) sizes[sizes.length - 1] = "";
    return { mark: this.mark, sizes };
  }

  /** What stdin carries after the environment. */
  get stdin(): Buffer {
    return Buffer.concat(this.archives);
  }
}

/**
 * Stdout of an exec that carries archives: held until the mark shows (the
 * extraction's diagnostics, the first DIAG_BYTES kept), passed on after it.
 */
export class MarkedOutput {
  private readonly mark: Buffer;
  private tail = Buffer.alloc(0);
  private diag = Buffer.alloc(0);
  private found = false;

  constructor(
    mark: string,
    private readonly onJob: (chunk: Buffer) => void,
  ) {
    this.mark = Buffer.from(mark);
  }

  push(chunk: Buffer): void {
    if (this.found) {
      this.onJob(chunk);
      return;
    }
    const buf = Buffer.concat([this.tail, chunk]);
    const at = buf.indexOf(this.mark);
    const before = at >= 0 ? buf.subarray(0, at) : buf.subarray(0, Math.max(0, buf.length - (this.mark.length - 1)));
    if (this.diag.length < DIAG_BYTES) this.diag = Buffer.concat([this.diag, before.subarray(0, DIAG_BYTES - this.diag.length)]);
    if (at < 0) {
      // Only a partial mark can span chunks: keep just that much.
      this.tail = Buffer.from(buf.subarray(before.length));
      return;
    }
    this.found = true;
    this.tail = Buffer.alloc(0);
    const rest = buf.subarray(at + this.mark.length);
    if (rest.length > 0) this.onJob(Buffer.from(rest));
  }

  /** Whether the job started (the extraction succeeded). */
  get started(): boolean {
    return this.found;
  }

  /** What the extraction printed before it ended or the mark came. */
  get diagnostics(): string {
    return Buffer.concat([this.diag, this.found ? Buffer.alloc(0) : this.tail]).toString("utf8").trim();
  }
}

/**
 * Reads `stream` whole when it ends within `max` bytes; otherwise stops
 * there and returns a stream of all of it (what was read, then the rest).
 * Rejects with the stream's error.
 */
export function readUpTo(stream: Readable, max: number): Promise<Buffer | Readable> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const off = (): void => {
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.off("error", onError);
    };
    const onData = (c: Buffer): void => {
      chunks.push(c);
      size += c.length;
      if (size <= max) return;
      stream.pause();
      off();
      const whole = new PassThrough();
      stream.on("error", (err) => whole.destroy(err));
      for (const c of chunks) whole.write(c);
      stream.pipe(whole);
      resolve(whole);
    };
    const onEnd = (): void => {
      off();
      resolve(Buffer.concat(chunks, size));
    };
    const onError = (err: Error): void => {
      off();
      reject(err);
    };
    stream.on("data", onData);
    stream.on("end", onEnd);
    stream.on("error", onError);
  });
}
