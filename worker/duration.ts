/**
 * The one duration syntax of the project: a number with an optional unit,
 * "500ms", "10s", "2m", "12h", "7d", "4w". What a bare number means depends
 * on where it is written, so the caller says: seconds for CLI flags
 * (`--timeout 10`), milliseconds for settings and snapshot ages.
 */
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?$/;
const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

export type DurationUnit = keyof typeof UNIT_MS;

/** Milliseconds, or null when `text` is not a duration. */
export function parseDuration(text: string, bareUnit: DurationUnit): number | null {
  const m = DURATION.exec(text.trim());
  if (!m) return null;
  return Math.round(Number(m[1]) * UNIT_MS[(m[2] as DurationUnit | undefined) ?? bareUnit]);
}
