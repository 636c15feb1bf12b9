/**
 * Structured logs: one JSON object per line on stderr. Callers pass facts,
 * never secret values (secrets are referred to by name only).
 */
export type LogLevel = "debug" | "info" | "warn" | "error";

export interface Logger {
  log(level: LogLevel, event: string, fields?: Record<string, unknown>): void;
}

export function jsonLogger(base: Record<string, unknown> = {}, write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  return {
    log(level, event, fields = {}) {
      write(`${JSON.stringify({ time: new Date().toISOString(), level, event, ...base, ...fields })}\n`);
    },
  };
}

export const silentLogger: Logger = { log() {} };
