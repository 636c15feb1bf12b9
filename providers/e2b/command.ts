/**
 * The command string an E2B exec runs. `commands.start` runs
 * `/bin/bash -l -c STRING` with the sandbox's environment plus the given
 * one, so argv, environment and cwd go in the string exactly as for
 * Superserve (providers/superserve/command.ts: the shell's own `cd`, then
 * `env -i` in front of argv). The one difference: a job with stdin
 * keeps the pipe envd gives it (started with `stdin: true`) instead of
 * /dev/null.
 */
import type { ExecRequest } from "../provider.js";
import { commandString } from "../superserve/command.js";

const STDIN_CLOSED = "exec </dev/null; ";

export function e2bCommand(req: Pick<ExecRequest, "argv" | "env" | "cwd" | "stdin">): string {
  const s = commandString(req);
  if (req.stdin === undefined) return s;
  if (!s.startsWith(STDIN_CLOSED)) throw new Error("commandString no longer starts by closing stdin; e2b/command.ts must follow it");
  return s.slice(STDIN_CLOSED.length);
}
