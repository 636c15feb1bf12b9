/**
 * What of the sandbox's /proc is read-only or hidden, as bwrap operations
 * (placed right after `--proc /proc`).
 *
 * Why this matters here: bwrap run as root maps the sandbox's uid to host
 * uid 0. Without capabilities that is harmless for files (every mount is
 * read-only or the sandbox's own), but procfs checks sysctl writes against
 * the *owner bits* for the global root uid: a sandbox could write host-wide
 * sysctls such as kernel.core_pattern (a pipe to any host program, run as
 * real root on the next crash). bwrap itself only covers /proc/sys when it is
 * writable for its own access() check, which is not the case when run as
 * root. The list follows Docker's defaults (readonlyPaths / maskedPaths).
 */
import { existsSync, statSync } from "node:fs";

/** Bound read-only over themselves. */
export const PROC_READONLY = ["sys", "sysrq-trigger", "irq", "bus", "fs"] as const;

/** Hidden: kernel memory, keys, timers and scheduler internals, hardware. */
export const PROC_MASKED = ["kcore", "keys", "timer_list", "sched_debug", "latency_stats", "scsi", "acpi", "asound", "kpagecount", "kpageflags", "kpagecgroup"] as const;

let cached: string[] | undefined;

/**
 * bwrap arguments for the entries this kernel has (bwrap fails on a missing
 * destination, and the sandbox's /proc shows what the host's does). Computed
 * once: the set of /proc entries does not change while the kernel runs.
 */
export function procMaskOps(procDir = "/proc"): string[] {
  if (procDir === "/proc" && cached) return cached;
  const ops: string[] = [];
  for (const name of PROC_READONLY) {
    const p = `${procDir}/${name}`;
    // Source is the host's entry of the same name: same kernel objects (sysctls
    // under net/ follow the reader's network namespace, so the sandbox sees its own).
    if (existsSync(p)) ops.push("--ro-bind", p, `/proc/${name}`);
  }
  for (const name of PROC_MASKED) {
    const p = `${procDir}/${name}`;
    if (!existsSync(p)) continue;
    ops.push(...(statSync(p).isDirectory() ? ["--tmpfs", `/proc/${name}`, "--remount-ro", `/proc/${name}`] : ["--ro-bind", "/dev/null", `/proc/${name}`]));
  }
  if (procDir === "/proc") cached = ops;
  return ops;
}
