/**
 * The command string a Superserve exec runs. The service takes one string
 * (its shell runs it) plus a working directory and environment that it
 * adds to the sandbox's own; the job contract wants argv exactly, exactly
 * the request's environment and a cwd that, when missing, fails the way
 * `sh -c 'cd …'` does. So the string is
 *
 *   exec env -i NAME=VALUE… /bin/sh -c 'cd -- "$1" || exit 126; shift; unset OLDPWD; exec "$@"' sandqueue-exec CWD ARGV…
 *
 * after `exec </dev/null`, every word single-quoted (the quoting in which
 * all bytes but NUL are literal). Validation (argv, env names, NUL bytes, absolute cwd) is the
 * request script's, shared with the local and docker providers.
 */
import { WORKSPACE_DIR, type ExecRequest } from "../provider.js";
import { requestPrelude, shellQuote } from "../request-script.js";

/** Stdin is /dev/null: reading it ends at once, whatever the service would otherwise give. */
export function commandString(req: Pick<ExecRequest, "argv" | "env" | "cwd">): string {
  requestPrelude(req); // validation only
  const cwd = req.cwd ?? WORKSPACE_DIR;
  // sh exports PWD as it finds it; a job sees the directory it runs in.
  const vars = { ...(req.env.PWD === undefined ? { PWD: cwd } : {}), ...req.env };
  // cd sets OLDPWD; the job gets it only when it asked for it.
  const oldpwd = req.env.OLDPWD === undefined ? "unset OLDPWD" : `export OLDPWD=${shellQuote(req.env.OLDPWD)}`;
  const run = `cd -- "$1" || exit 126; shift; ${oldpwd}; exec "$@"`;
  const words = ["env", "-i", ...Object.entries(vars).map(([k, v]) => `${k}=${v}`), "/bin/sh", "-c", run, "sandqueue-exec", cwd, ...req.argv];
  return `exec </dev/null; exec ${words.map(shellQuote).join(" ")}`;
}
