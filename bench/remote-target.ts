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
  /** How many sandboxes the service lists (a warm pool's waiting ones aside). */
  count(): Promise<number>;
  /** Whether background work between jobs is done (a warm pool refilled); absent: nothing to wait for. */
  atRest?(): Promise<boolean>;
  stop(): Promise<void>;
}

export interface RemoteBenchTarget {
  /** The provider's registry name. */
  provider: string;
  /** The row's name, when one provider has several (a setting changed); default the provider's. */
  name?: string;
  /** Worker settings on top of the stand-in's env file. */
  workerEnv?: Record<string, string>;
  start(local: LocalProvider): Promise<RemoteStandinHandle>;
}

