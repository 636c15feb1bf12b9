/**
 * The command string a Superserve exec runs. The service takes one string
 * (its shell runs it) plus a working directory and environment that it
 * adds to the sandbox's own; the job contract wants argv exactly, exactly
 * the request's environment and a cwd that, when missing, fails the way
 * `sh -c 'cd …'` does. So the string is
 *
 *   exec </dev/null; cd -- CWD || exit 126; exec env -i "PWD=$PWD" NAME=VALUE… ARGV…
 *
 * every word single-quoted (the quoting in which all bytes but NUL are
 * literal). The service's own shell enters the cwd, and `env -i` starts
 * argv with nothing but the listed variables: one program start in front
 * of the job, the fewest that gives an exact environment (a shell cannot
 * list its exported variables without a fork, which costs as much here).
 * PWD is the shell's after its `cd`, as `sh` would export it; OLDPWD only
 * when the request has it. Validation (argv, env names, NUL bytes, absolute
 * cwd) is the request script's, shared with the local and docker providers.
 */
import { WORKSPACE_DIR, type ExecRequest } from "../provider.js";
import { CWD_MISSING_STATUS, requestPrelude, shellQuote } from "../request-script.js";

/** `env` would take a program name containing `=` for one more variable: such an argv goes through `sh`'s exec. */
const EXEC_ARGV = ["/bin/sh", "-c", 'exec "$@"', "sandqueue-exec"];

/** Stdin is /dev/null: reading it ends at once, whatever the service would otherwise give. */
export function commandString(req: Pick<ExecRequest, "argv" | "env" | "cwd">): string {
  requestPrelude(req); // validation only
  const cwd = req.cwd ?? WORKSPACE_DIR;
  const vars = Object.entries(req.env).map(([k, v]) => shellQuote(`${k}=${v}`));
  // Double quotes: the service's shell expands it after its cd.
  if (req.env.PWD === undefined) vars.unshift('"PWD=$PWD"');
  const argv = req.argv[0]!.includes("=") ? [...EXEC_ARGV, ...req.argv] : req.argv;
  return `exec </dev/null; cd -- ${shellQuote(cwd)} || exit ${CWD_MISSING_STATUS}; exec env -i ${[...vars, ...argv.map(shellQuote)].join(" ")}`;
}
