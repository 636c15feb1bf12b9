/** Parsing of CLI values that carry units, with errors that name the flag. */
import { open } from "node:fs/promises";
import { ConfigError, ErrorCodes } from "../errors/index.js";
import { parseDuration } from "../worker/duration.js";

/** "10s", "500ms", "2m", "1h"; a bare number is seconds. */
export function parseDurationMs(flag: string, value: string): number {
  const ms = parseDuration(value, "s");
  if (ms === null) throw usage(`--${flag} ${JSON.stringify(value)}: expected a duration such as 500ms, 10s, 2m or 1h`);
  if (ms < 1) throw usage(`--${flag} ${JSON.stringify(value)}: expected a duration of at least 1ms`);
  return ms;
}

export function parseIntFlag(flag: string, value: string, min: number, max: number): number {
  if (!/^\d+$/.test(value.trim())) throw usage(`--${flag} ${JSON.stringify(value)}: expected an integer from ${min} to ${max}`);
  const n = Number(value);
  if (n < min || n > max) throw usage(`--${flag} ${JSON.stringify(value)}: expected an integer from ${min} to ${max}`);
  return n;
}

/** "K=V" pairs (the value may itself contain '='). */
export function parsePairs(flag: string, values: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values ?? []) {
    const i = v.indexOf("=");
    if (i <= 0) throw usage(`--${flag} ${JSON.stringify(v)}: expected KEY=VALUE`);
    out[v.slice(0, i)] = v.slice(i + 1);
  }
  return out;
}

export function usage(message: string): ConfigError {
  return new ConfigError(ErrorCodes.CONFIG_INVALID, message);
}

/** A flag given as '' would otherwise be silently ignored (or mean something odd): refuse it. */
export function refuseEmpty(values: Record<string, string | boolean | (string | boolean)[] | undefined>): void {
  for (const [flag, v] of Object.entries(values)) {
    for (const one of Array.isArray(v) ? v : [v]) {
      if (one === "") throw usage(`--${flag} "": expected a non-empty value`);
    }
  }
}

/**
 * Reads a local file for `--file PATH=LOCAL`, at most `budget` bytes: a huge
 * file or an endless one (/dev/zero, a pipe) is refused as soon as it passes
 * the budget, never read whole into memory.
 */
export async function readCapped(flag: string, given: string, local: string, budget: number, limit: number): Promise<Buffer> {
  const fail = (why: string) => usage(`--${flag} ${given}: ${local} ${why}`);
  const fh = await open(local, "r").catch((err: NodeJS.ErrnoException) => {
    throw fail(`cannot be read (${err.code ?? err.message})`);
  });
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw fail("is a directory; expected a file");
    const tooBig = () =>
      fail(`holds more than the ${budget} bytes left of the ${limit}-byte inline files limit; larger inputs belong in a workspace snapshot (--from)`);
    if (st.isFile() && st.size > budget) throw tooBig();
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.min(1024 * 1024, budget + 1 - total));
      const { bytesRead } = await fh.read(buf, 0, buf.length, null).catch((err: NodeJS.ErrnoException) => {
        throw fail(`cannot be read (${err.code ?? err.message})`);
      });
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > budget) throw tooBig();
      chunks.push(buf.subarray(0, bytesRead));
    }
    return Buffer.concat(chunks, total);
  } finally {
    await fh.close();
  }
}

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** File content for a spec: text when the bytes are UTF-8 (readable in Redis), else base64 (exact bytes). */
export function inlineContent(bytes: Buffer): string | { base64: string } {
  try {
    return STRICT_UTF8.decode(bytes);
  } catch {
    return { base64: bytes.toString("base64") };
  }
}
