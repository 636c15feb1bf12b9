/**
 * Killing one exec of a local sandbox without leaving zombies.
 *
 * SIGKILLing bwrap's monitor first (the process the worker spawned) orphans
 * its child, the pid namespace's init: it is re-parented to the machine's
 * pid 1, which on minimal VMs and in containers may never reap it, so every
 * timed-out job would leave a zombie behind. Killing every process of the
 * exec's cgroup *except* the monitor lets the monitor see its child die, reap
 * it and exit by itself; the monitor is killed directly only if it lingers.
 */
import { readProcs } from "./cgroups.js";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * SIGKILLs every process listed in `procsFile` but `monitorPid`, again and
 * again (a process may fork between a read and a kill) until none is left
 * or `maxRounds` passes. Returns how many rounds found something to kill.
 */
export async function killAllExcept(procsFile: string, monitorPid: number | undefined, maxRounds = 100): Promise<number> {
  let rounds = 0;
  for (let i = 0; i < maxRounds; i++) {
    const pids = readProcs(procsFile).filter((p) => p !== monitorPid);
    if (pids.length === 0) return rounds;
    rounds++;
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    await sleep(i < 10 ? 2 : 20);
  }
  return rounds;
}

/** Resolves true once `exited()` holds, false after `ms`. */
export async function waitFor(exited: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!exited()) {
    if (Date.now() >= deadline) return false;
    await sleep(5);
  }
  return true;
}

/**
 * Whether `pid` has joined the cgroup yet. Before it has, the wrapper has not
 * exec'd bwrap, so nothing can be orphaned and killing it directly is right
 * (waiting for it to exit would let the job start).
 */
export async function isListed(procsFile: string, pid: number | undefined): Promise<boolean> {
  return pid !== undefined && readProcs(procsFile).includes(pid);
}
