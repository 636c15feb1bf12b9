/**
 * A stand-in started as an operator would (`npm run standin -- NAME
 * --env-file FILE`; here `node dist/standins/cli.js`, as npm would not pass
 * our SIGTERM on), for worker tests: the variables it wrote, and a stop
 * that waits for it to delete its sandboxes and exit.
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { tempDir } from "./harness.js";

const ROOT = path.resolve(import.meta.dirname, "../..");

export interface StandinProcess {
  /** The env file's KEY=value lines. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

export function parseEnvFile(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split("\n")
      .filter((l) => l.includes("="))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

/** Starts `standins/cli.js NAME --env-file FILE [ARGS…]` and waits until FILE holds `readyKey`. */
export async function startStandinProcess(name: string, readyKey: string, timeoutMs = 30_000, args: string[] = []): Promise<StandinProcess> {
  const envFile = path.join(tempDir(`${name}-env`), `${name}.env`);
  const proc = spawn("node", ["--", "dist/standins/cli.js", name, "--env-file", envFile, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
  const end = Date.now() + timeoutMs;
  while (!existsSync(envFile) || !readFileSync(envFile, "utf8").includes(`${readyKey}=`)) {
    if (Date.now() > end || proc.exitCode !== null) {
      proc.kill("SIGTERM");
      throw new Error(`the ${name} stand-in wrote no env file`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    env: parseEnvFile(readFileSync(envFile, "utf8")),
    async stop() {
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGTERM");
      await exited;
    },
  };
}

/** Polls `check` every 100 ms until it holds; fails naming `what` after `timeoutMs`. */
export async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
