/**
 * The shell text both launchers (local: a FIFO sourced by bwrap's shell;
 * docker: the attach stream read by the container's PID 1) run before the
 * job: cd, then exactly the request's environment. The request crosses as
 * script text so it is never on a command line; every value is
 * single-quoted, the one quoting in which all bytes but NUL are literal.
 */
import path from "node:path";
import { ErrorCodes, ProviderError } from "../errors/index.js";
import { WORKSPACE_DIR } from "./provider.js";

/** What of an exec request becomes script text. */
export interface RequestParts {
  argv: readonly string[];
  env: Readonly<Record<string, string>>;
  cwd?: string;
}

const SHELL_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Exit status of the request script when its cwd does not exist (the command never ran). */
export const CWD_MISSING_STATUS = 126;

function invalid(message: string): ProviderError {
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, message, { retryable: false });
}

export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function checkString(what: string, value: string): void {
  if (value.includes("\0")) throw invalid(`${what} contains a NUL byte`);
}

/**
 * Validates `req` and returns the lines that enter its cwd and set its
 * environment. PWD and OLDPWD, which the shell exports by itself, are
 * dropped first, so the job's environment is exactly `req.env`.
 */
export function requestPrelude(req: RequestParts): string[] {
  if (req.argv.length === 0) throw invalid("empty argv");
  req.argv.forEach((a, i) => checkString(`argv[${i}]`, a));
  const cwd = req.cwd ?? WORKSPACE_DIR;
  checkString("cwd", cwd);
  if (!path.posix.isAbsolute(cwd)) throw invalid(`exec cwd '${cwd}' must be an absolute path`);
  const lines = [`cd -- ${shellQuote(cwd)} || exit ${CWD_MISSING_STATUS}`, "unset PWD OLDPWD"];
  for (const [name, value] of Object.entries(req.env)) {
    if (!SHELL_NAME.test(name)) throw invalid(`environment variable name "${name.replace(/\0/g, "\\0")}" is not a shell identifier`);
    checkString(`environment variable ${name}`, value);
    lines.push(`export ${name}=${shellQuote(value)}`);
  }
  return lines;
}
