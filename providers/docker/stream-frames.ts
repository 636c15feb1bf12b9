/**
 * Docker's multiplexed attach/exec stream (Tty=false): each frame is an
 * 8-byte header — stream type (1 stdout, 2 stderr), three zero bytes, a
 * big-endian uint32 payload length — followed by the payload.
 */
export type FrameStream = "stdout" | "stderr";

export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly onFrame: (stream: FrameStream, payload: Buffer) => void) {}

  push(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf.length >= 8) {
      const type = this.buf[0];
      const size = this.buf.readUInt32BE(4);
      if (this.buf.length < 8 + size) break;
      const payload = this.buf.subarray(8, 8 + size);
      this.buf = this.buf.subarray(8 + size);
      // Type 0 (stdin echo) never carries output; anything else is stdout.
      if (type === 2) this.onFrame("stderr", payload);
      else if (type !== 0) this.onFrame("stdout", payload);
    }
  }

  /** Bytes of an incomplete frame left when the stream ended. */
  get pending(): number {
    return this.buf.length;
  }
}

/** Encodes one frame (tests and the exec-stdin path use the same layout). */
export function encodeFrame(stream: FrameStream, payload: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header[0] = stream === "stderr" ? 2 : 1;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
}
