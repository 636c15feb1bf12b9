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
import { requestPrelude, shellQuote, type RequestParts } from "../request-script.js";

/** The fd of the request FIFO inside the sandbox. */
export const REQUEST_FD = 5;

export const LAUNCHER_ARGV: readonly string[] = ["/bin/sh", "-c", `. /proc/self/fd/${REQUEST_FD}`];

/**
 * The script the launcher sources: the request fd is closed first (the job
 * must not inherit it), then the shared prelude, then exec of the command.
 */
export function launchScript(req: RequestParts): string {
  const lines = [`exec ${REQUEST_FD}<&-`, ...requestPrelude(req)];
  // A command name starting with '-' would read as an option of exec.
  const [cmd, ...rest] = req.argv;
  lines.push(`exec ${cmd!.startsWith("-") ? "./" : ""}${[cmd!, ...rest].map(shellQuote).join(" ")}`);
  return `${lines.join("\n")}\n`;
}
