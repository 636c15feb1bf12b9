/**
 * The direct exec of a job on an instance that has no network but loopback:
 * one exec session running `/usr/bin/env -i /bin/sh -s -- ARGV…`, with the
 * request script on stdin (never on a command line: values may be secrets):
 * the shared prelude (cd, then exactly the request's environment; validation
 * of argv, env names, NUL bytes, cwd) and `exec "$@"`. The job's stdin is
 * what is left of the script's: nothing (end of file at once).
 *
 * The first exec on a sandbox also checks, before anything of the job runs,
 * that the instance's only interface is lo (/proc/net/dev); when it is not,
 * it exits NOT_ISOLATED_STATUS with NOT_ISOLATED_MARK on stderr and the
 * sandbox uses the exec shim from then on (which cuts the network itself,
 * or refuses to run).
 */
import type { ExecRequest } from "../provider.js";
import { requestPrelude } from "../request-script.js";

export const NOT_ISOLATED_STATUS = 199;
export const NOT_ISOLATED_MARK = "sandqueue: network not isolated\n";

const NETWORK_CHECK = [
  // printf's format turns \n into the newline NOT_ISOLATED_MARK ends with.
  `fail() { printf 'sandqueue: network not isolated\\n' >&2; exit ${NOT_ISOLATED_STATUS}; }`,
  "[ -r /proc/net/dev ] || fail",
  'while read -r l; do case $l in *:*) n=${l%%:*}; n=${n##* }; [ "$n" = lo ] || fail;; esac; done < /proc/net/dev',
];

export const DIRECT_ARGV_PREFIX = ["/usr/bin/env", "-i", "/bin/sh", "-s", "--"];

/** argv and stdin script of a direct exec; `checkNetwork` on the first one of a sandbox. */
export function directExec(req: Pick<ExecRequest, "argv" | "env" | "cwd">, checkNetwork: boolean): { argv: string[]; script: Buffer } {
  const prelude = requestPrelude(req);
  const lines = [...(checkNetwork ? NETWORK_CHECK : []), ...prelude, 'exec "$@"', ""];
  return { argv: [...DIRECT_ARGV_PREFIX, ...req.argv], script: Buffer.from(lines.join("\n")) };
}
