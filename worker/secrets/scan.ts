/**
 * Keeps secret values out of snapshots: a pass-through over the workspace
 * tar that fails the stream when a resolved secret value appears in it (in a
 * file's content or name). A tar cannot be masked in place without breaking
 * its sizes, so a workspace holding a secret is not persisted at all.
 */
import { Transform, type TransformCallback } from "node:stream";
import { ErrorCodes, SecretError } from "../../errors/index.js";

export class SecretScanner extends Transform {
  private readonly needles: { name: string; bytes: Buffer }[];
  private readonly keep: number;
  private carry: Buffer = Buffer.alloc(0);

  /** `secrets`: NAME -> value. Values shorter than 4 bytes are not scanned (too many false hits). */
  constructor(secrets: Record<string, string>) {
    super();
    this.needles = Object.entries(secrets)
      .filter(([, v]) => Buffer.byteLength(v) >= 4)
      .map(([name, v]) => ({ name, bytes: Buffer.from(v) }));
    this.keep = Math.max(0, ...this.needles.map((n) => n.bytes.length - 1));
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.needles.length === 0) return cb(null, chunk);
    const window = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
    const hit = this.needles.find((n) => window.includes(n.bytes));
    if (hit) {
      return cb(
        new SecretError(
          ErrorCodes.SECRET_IN_WORKSPACE,
          `the workspace contains the value of secret ${hit.name}; it was not persisted (secrets never enter snapshots)`,
          { retryable: false, details: { secret: hit.name } },
        ),
      );
    }
    this.carry = Buffer.from(window.subarray(Math.max(0, window.length - this.keep)));
    cb(null, chunk);
  }
}
