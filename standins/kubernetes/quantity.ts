/**
 * Resource quantities (`256Mi`, `1G`, `0.5Gi`, `129e6`, `100m`) as the API
 * accepts them (k8s.io/apimachinery/pkg/api/resource), parsed to a number.
 */

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, "": 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

const QUANTITY = /^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$/;

/** The value of a quantity (a JSON number is accepted too, as the API does), or null when it is not one. */
export function parseQuantity(q: unknown): number | null {
  if (typeof q === "number") return Number.isFinite(q) ? q : null;
  if (typeof q !== "string") return null;
  const m = QUANTITY.exec(q.trim());
  if (!m || q.trim() !== q) return null;
  const base = Number(m[1]);
  if (m[2] !== undefined) return base * 10 ** Number(m[2].slice(1));
  const suffix = m[3] ?? "";
  const factor = BINARY[suffix] ?? DECIMAL[suffix];
  return factor === undefined ? null : base * factor;
}

const MiB = 2 ** 20;

/** A memory quantity in whole MiB, rounded up (a limit is never loosened). */
export function memoryMiB(q: unknown): number | null {
  const bytes = parseQuantity(q);
  if (bytes === null || bytes < 0) return null;
  return Math.max(1, Math.ceil(bytes / MiB));
}
