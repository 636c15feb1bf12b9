/**
 * What an attached instance is put through before and after each job (and
 * by the reaper for a holder that died): every process a job left is
 * killed, then /workspace is emptied. Jobs run in exec sessions, and a
 * process a job detaches (`setsid`, a daemon, `nohup … &`) would otherwise
 * outlive its session and see the next holder's job.
 *
 * Which processes are a job's: those outside PID 1's session. A container
 * runtime starts the service's command as a session leader and each exec
 * session in a session of its own (runc calls setsid for both), so the
 * service's own processes share PID 1's session and a job's never do, not
 * even after `setsid`. The cleaning shell and its ancestors are spared;
 * passes repeat until one kills nothing (a job may fork while it is
 * scanned). What this costs an attached service: processes of its own that
 * left its session (rare in a service that exists to run jobs) are killed
 * too. Only POSIX sh and /proc: no program start per process.
 */

/** `sid_of PID` sets $ppid and $sid from /proc/PID/stat (comm may hold spaces and parentheses: cut at the last ") "). */
const SID_OF = 'sid_of() { read -r l < "/proc/$1/stat" || return 1; set -- ${l##*) }; ppid=$2; sid=$4; }';

export const KILL_JOB_PROCESSES = [
  SID_OF,
  // A function: where /proc/1 cannot be read it returns, and the workspace is still emptied after it.
  "sq_kill_jobs() {",
  "  sid_of 1 || return 0",
  "  init=$sid",
  '  keep=" 1 "',
  '  p=$$; while [ "$p" -gt 1 ] && sid_of "$p"; do keep="$keep$p "; p=$ppid; done',
  "  n=0",
  '  while [ "$n" -lt 20 ]; do',
  "    n=$((n + 1)); killed=0",
  "    for d in /proc/[0-9]*; do",
  '      p=${d#/proc/}; case $keep in *" $p "*) continue;; esac',
  '      sid_of "$p" 2>/dev/null || continue',
  '      [ "$sid" = "$init" ] && continue',
  '      kill -9 "$p" 2>/dev/null && killed=1',
  "    done",
  '    [ "$killed" = 0 ] && return 0',
  "  done",
  "}",
  "sq_kill_jobs",
].join("\n");

/** Empties the workspace (made when missing); unreadable leftovers made removable first. */
const EMPTY_WORKSPACE = "mkdir -p /workspace && chmod -R u+rwX /workspace 2>/dev/null; find /workspace -mindepth 1 -delete";

/** The script, for `/bin/sh -c`: exits 0 when the instance is clean. */
export const CLEAN_INSTANCE = `${KILL_JOB_PROCESSES}\n${EMPTY_WORKSPACE}`;
