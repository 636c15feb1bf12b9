/**
 * Capped capture of one output stream.
 *
 * Holds at most `maxBytes` in memory whatever the sandbox writes; the first
 * byte past the cap calls `onOverflow` once (the provider kills the sandbox)
 * and everything after it is drained and dropped so the pipe never blocks.
 */
import type { Readable } from "node:stream";

export class CappedCapture {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private overflowed = false;
  readonly done: Promise<void>;

  constructor(
    stream: Readable,
    private readonly maxBytes: number,
    private readonly onOverflow: () => void,
  ) {
    this.done = new Promise<void>((resolve) => {
      stream.on("data", (chunk: Buffer) => this.push(chunk));
      // 'close' also fires after an error; a broken pipe is just the end of output.
      stream.on("close", () => resolve());
      stream.on("error", () => resolve());
    });
  }

  private push(chunk: Buffer): void {
    if (this.overflowed) return;
    const room = this.maxBytes - this.size;
    if (chunk.length <= room) {
      this.chunks.push(chunk);
      this.size += chunk.length;
      return;
    }
    // Copy: a view would keep the whole chunk alive past the cap.
    if (room > 0) this.chunks.push(Buffer.from(chunk.subarray(0, room)));
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
