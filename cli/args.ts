/** Parsing of CLI values that carry units, with errors that name the flag. */
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
