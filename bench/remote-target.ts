/** What bench/remote-bench.ts needs of each remote target (one file per service: bench/remote-NAME.ts). */
import type { LocalProvider } from "../providers/local/index.js";

/** The code every job runs; its output must be "42\n". */
export const BENCH_CODE = "print(6 * 7)";

/** The KEY=value lines of a stand-in's env file as variables (a value keeps any "=" it holds). */
export function envFromFile(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split("\n")
      .filter((l) => l.includes("="))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

export interface RemoteStandinHandle {
  /** KEY=value variables a worker needs (what the stand-in's env file holds). */
  env: Record<string, string>;
  /** One job with only the service's own calls: resolves with the command's stdout once it is in hand, and a promise of the delete. */
  minimalJob(i: number): Promise<{ stdout: string; deleted: Promise<void> }>;
  /** How many sandboxes the service lists. */
  count(): Promise<number>;
  stop(): Promise<void>;
}

export interface RemoteBenchTarget {
  /** The provider's registry name. */
  provider: string;
  start(local: LocalProvider): Promise<RemoteStandinHandle>;
}

