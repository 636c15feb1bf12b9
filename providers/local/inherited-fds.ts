/**
 * File descriptors the worker inherited from whoever started it, without
 * close-on-exec. Node and libuv open everything with O_CLOEXEC, but an fd
 * left open by a supervisor or shell stays open across exec into every child:
 * bwrap does not close it either, so sandbox code could read or write it.
 *
 * The spawned wrapper closes them before exec'ing bwrap. dash cannot name an
 * fd above 9 in a redirection, so when one is that high the wrapper runs
 * under bash (about a millisecond more per exec, and only in such setups).
 */
import { readdirSync, readFileSync } from "node:fs";

const O_CLOEXEC = 0o2000000;

let cached: number[] | undefined;

/** Open fds above 2 without close-on-exec, read once from /proc/self/fdinfo. */
export function inheritedFds(fdinfoDir = "/proc/self/fdinfo"): number[] {
  if (fdinfoDir === "/proc/self/fdinfo" && cached) return cached;
  const out: number[] = [];
  for (const name of readdirSync(fdinfoDir)) {
    const fd = Number(name);
    if (!Number.isInteger(fd) || fd <= 2) continue;
    let flags: number;
    try {
      const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`${fdinfoDir}/${name}`, "utf8"));
      if (!m) continue;
      flags = parseInt(m[1]!, 8);
    } catch {
      continue; // closed meanwhile (e.g. the directory fd of readdir itself)
    }
    if ((flags & O_CLOEXEC) === 0) out.push(fd);
  }
  if (fdinfoDir === "/proc/self/fdinfo") cached = out;
  return out;
}

/**
 * The shell and script prefix that close `fds` (except those the spawn
 * itself sets up, which replace whatever was there).
 */
export function closeInheritedPrefix(fds: readonly number[], keep: readonly number[]): { shell: string; prefix: string } {
  const close = fds.filter((fd) => !keep.includes(fd) && Number.isInteger(fd) && fd > 2);
  if (close.length === 0) return { shell: "/bin/sh", prefix: "" };
  return { shell: close.some((fd) => fd > 9) ? "/bin/bash" : "/bin/sh", prefix: `exec ${close.map((fd) => `${fd}>&-`).join(" ")}; ` };
}
