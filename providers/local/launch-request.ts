/**
 * How a started bwrap learns what to run.
 *
 * bwrap's command is a fixed launcher, `sh -c '. /proc/self/fd/5'`: the
 * image's shell sources a FIFO and blocks until the worker writes the exec
 * request into it. So a sandbox can be started before its job is known (the
 * pre-start pool), and the request's environment, secrets included, never
 * appears on a command line, in a file or in bwrap's arguments: it crosses a
 * kernel pipe buffer once. dash executes sourced commands as it parses them,
 * so the final command runs without waiting for an end of file.
 */
import { WORKSPACE_DIR } from "../provider.js";
import { requestPrelude, shellQuote, type RequestParts } from "../request-script.js";

/** The fd of the request FIFO inside the sandbox. */
export const REQUEST_FD = 5;

export const LAUNCHER_SHELL = "/bin/sh";

export const LAUNCHER_ARGV: readonly string[] = [LAUNCHER_SHELL, "-c", `. /proc/self/fd/${REQUEST_FD}`];

/**
 * The script the launcher sources: the request fd is closed first (the job
 * must not inherit it), then the shared prelude, then the command.
 *
 * A plain `/bin/sh -c SCRIPT` (every shell job) runs in the launcher's own
 * shell, the same /bin/sh started with -c, instead of exec'ing a second one:
 * one exec less per job (~0.9 ms of CPU, measured in docs/PERFORMANCE.md).
 * `eval` parses and runs the script as `sh -c` does, one command at a time,
 * with line numbers from 1; what that shell would set up itself, an exported
 * PWD, is set here. The one visible difference: the shell's own error
 * messages read `/bin/sh: 1: eval: …` instead of `/bin/sh: 1: …`.
 */
export function launchScript(req: RequestParts): string {
  const lines = [`exec ${REQUEST_FD}<&-`, ...requestPrelude(req)];
  const [cmd, ...rest] = req.argv;
  if (rest.length === 2 && cmd === LAUNCHER_SHELL && rest[0] === "-c") {
    lines.push(`export PWD=${shellQuote(req.cwd ?? WORKSPACE_DIR)}`, `eval ${shellQuote(rest[1]!)}`);
  } else {
    // A command name starting with '-' would read as an option of exec.
    lines.push(`exec ${cmd!.startsWith("-") ? "./" : ""}${[cmd!, ...rest].map(shellQuote).join(" ")}`);
  }
  return `${lines.join("\n")}\n`;
}
