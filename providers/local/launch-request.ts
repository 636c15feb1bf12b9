/**
 * How a started bwrap learns what to run.
 *
 * bwrap's command is a fixed launcher, `sh -c '. /proc/self/fd/5'`: the
 * image's shell sources a FIFO and blocks until the worker writes the exec
 * request into it. So a sandbox can be started before its job is known (the
 * pre-start pool), and the request's environment, secrets included, never
 * appears on a command line, in a file or in bwrap's arguments: it crosses a
 * kernel pipe buffer once. dash executes sourced commands as it parses them,
 * so the final `exec` runs without waiting for an end of file.
 */
import path from "node:path";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { WORKSPACE_DIR } from "../provider.js";

/** The fd of the request FIFO inside the sandbox. */
export const REQUEST_FD = 5;

export const LAUNCHER_ARGV: readonly string[] = ["/bin/sh", "-c", `. /proc/self/fd/${REQUEST_FD}`];

const SHELL_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function invalid(message: string): ProviderError {
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, message, { retryable: false });
}

/** POSIX single quotes: every byte but NUL is literal inside them. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export interface LaunchRequest {
  argv: readonly string[];
  env: Readonly<Record<string, string>>;
  cwd?: string;
}

/**
 * The script the launcher sources. The request fd is closed first (the job
 * must not inherit it); PWD/OLDPWD, which the shell sets by itself, are
 * dropped so the job's environment is exactly `env`.
 */
export function launchScript(req: LaunchRequest): string {
  if (req.argv.length === 0) throw invalid("exec argv is empty");
  for (const a of req.argv) if (a.includes("\0")) throw invalid("exec argv contains a NUL byte");
  const cwd = req.cwd ?? WORKSPACE_DIR;
  if (!path.posix.isAbsolute(cwd) || cwd.includes("\0")) throw invalid(`exec cwd '${cwd}' must be an absolute path`);
  const lines = [`exec ${REQUEST_FD}<&-`, `cd ${shellQuote(cwd)} || exit 1`, "unset PWD OLDPWD"];
  for (const [name, value] of Object.entries(req.env)) {
    if (!SHELL_NAME.test(name) || value.includes("\0")) {
      throw invalid(`invalid environment variable name or value for '${name.replace(/\0/g, "\\0")}' (names match [A-Za-z_][A-Za-z0-9_]*)`);
    }
    lines.push(`export ${name}=${shellQuote(value)}`);
  }
  // A command name starting with '-' would read as an option of exec.
  const [cmd, ...rest] = req.argv;
  lines.push(`exec ${cmd!.startsWith("-") ? "./" : ""}${[cmd!, ...rest].map(shellQuote).join(" ")}`);
  return `${lines.join("\n")}\n`;
}
