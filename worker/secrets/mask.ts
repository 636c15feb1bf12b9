/**
 * Output masking: every occurrence of a secret value in captured output
 * becomes "***". Byte-level (values are matched as their UTF-8 bytes), so
 * a value split across chunks or cut by truncation is still caught.
 *
 * Limits (docs/SNAPSHOTS.md#secrets): transformed values (base64, escaped
 * JSON, reversed) are not recognised; very short values mask a lot of
 * innocent output; with `truncated`, a tail that is a prefix of a value is
 * masked even if it is only one byte long, because the cut may have
 * happened inside the secret.
 */
import { Transform, type TransformCallback } from "node:stream";

export const MASK = Buffer.from("***");
const MAX_HOLD = 64 * 1024;

function needles(values: readonly string[]): Buffer[] {
  const uniq = [...new Set(values.filter((v) => v.length > 0))];
  return uniq.map((v) => Buffer.from(v, "utf8")).sort((a, b) => b.length - a.length);
}

/** Merged [start, end) ranges of every occurrence of every needle. */
function findRanges(buf: Buffer, ns: Buffer[], truncatedTail: boolean): [number, number][] {
  const ranges: [number, number][] = [];
  for (const n of ns) {
    for (let i = buf.indexOf(n); i !== -1; i = buf.indexOf(n, i + 1)) ranges.push([i, i + n.length]);
    if (truncatedTail) {
      // Longest proper prefix of the value that the buffer ends with.
      for (let len = Math.min(n.length - 1, buf.length); len > 0; len--) {
        if (buf.subarray(buf.length - len).equals(n.subarray(0, len))) {
          ranges.push([buf.length - len, buf.length]);
          break;
        }
      }
    }
  }
  ranges.sort((a, b) => a[0] - b[0]);
  const merged: [number, number][] = [];
  for (const r of ranges) {
    const last = merged[merged.length - 1];
    if (last && r[0] < last[1]) last[1] = Math.max(last[1], r[1]);
    else merged.push([r[0], r[1]]);
  }
  return merged;
}

function replaceRanges(buf: Buffer, ranges: [number, number][]): Buffer {
  if (ranges.length === 0) return buf;
  const parts: Buffer[] = [];
  let at = 0;
  for (const [s, e] of ranges) {
    parts.push(buf.subarray(at, s), MASK);
    at = e;
  }
  parts.push(buf.subarray(at));
  return Buffer.concat(parts);
}

/**
 * Replaces every occurrence of each value with "***". With `truncated`, a
 * tail that is the start of a value is masked too (the output was cut there).
 */
export function maskSecrets(buf: Buffer, values: readonly string[], opts: { truncated: boolean } = { truncated: false }): Buffer {
  const ns = needles(values);
  if (ns.length === 0) return buf;
  return replaceRanges(buf, findRanges(buf, ns, opts.truncated));
}

/**
 * Streaming masker: holds back the last (longest value - 1) bytes of each
 * chunk so a value split across chunks is seen whole. Call `markTruncated()`
 * (or pass `truncated`) when the source was cut short, so the held-back tail
 * is masked if it starts a value.
 */
export class SecretMasker extends Transform {
  private readonly ns: Buffer[];
  private readonly keep: number;
  private carry: Buffer = Buffer.alloc(0);
  private truncated: boolean;

  constructor(values: readonly string[], opts: { truncated?: boolean } = {}) {
    super();
    this.ns = needles(values);
    this.keep = this.ns.length ? this.ns[0]!.length - 1 : 0;
    this.truncated = opts.truncated ?? false;
  }

  markTruncated(): void {
    this.truncated = true;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.ns.length === 0) return cb(null, chunk);
    const data = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
    const ranges = findRanges(data, this.ns, false);
    let cut = Math.max(0, data.length - this.keep);
    // A match crossing the cut is held back whole: a longer or overlapping value
    // may continue it in the next chunk. Runs of overlapping matches longer than
    // MAX_HOLD are emitted (masked) anyway, so memory stays bounded.
    const emitted: [number, number][] = [];
    for (const r of ranges) {
      if (r[0] >= cut) break;
      if (r[1] > cut) {
        if (cut - r[0] <= MAX_HOLD) cut = r[0];
        else {
          emitted.push(r);
          cut = r[1];
        }
        break;
      }
      emitted.push(r);
    }
    this.carry = Buffer.from(data.subarray(cut));
    cb(null, replaceRanges(data.subarray(0, cut), emitted));
  }

  override _flush(cb: TransformCallback): void {
    const tail = this.carry;
    this.carry = Buffer.alloc(0);
    cb(null, tail.length ? replaceRanges(tail, findRanges(tail, this.ns, this.truncated)) : undefined);
  }
}
