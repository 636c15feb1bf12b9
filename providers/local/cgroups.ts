/**
 * Per-sandbox cgroups, v1 or v2 behind one interface.
 *
 * The kernel enforces the limits (memory, pids); we only read its counters
 * afterwards to say which limit was hit. Detection happens once, at provider
 * construction, from /proc/self/mounts.
 */
import { readFileSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { readFile, writeFile, rmdir, readdir, access, mkdir, constants } from "node:fs/promises";
import path from "node:path";
import { ErrorCodes, ProviderError } from "../../errors/index.js";

export interface CgroupLimits {
  memoryBytes: number;
  pids: number;
}

/** Monotonic counters; compare before/after an exec to attribute a kill. */
export interface CgroupCounters {
  oomKills: number;
  pidsMaxHits: number;
}

export interface SandboxCgroup {
  /** cgroup.procs files a process writes its pid into (one per v1 hierarchy). */
  readonly procsFiles: readonly string[];
  counters(): Promise<CgroupCounters>;
  /** SIGKILLs every process in the cgroup until it is empty (or gives up). */
  killAll(): Promise<void>;
  /** Kills what is left and removes the cgroup directories. Idempotent. */
  remove(): Promise<void>;
}

export interface CgroupManager {
  readonly version: 1 | 2;
  create(name: string, limits: CgroupLimits): Promise<SandboxCgroup>;
  /** Handle on an existing sandbox cgroup (e.g. a leftover to reap). */
  open(name: string): SandboxCgroup;
  /** Names of the sandbox cgroups currently under our parent. */
  list(): Promise<string[]>;
  /** The parent cgroup directories (one per v1 hierarchy). */
  readonly parentDirs: readonly string[];
  /** Absolute paths of the sandbox cgroup directories of `name`. */
  dirsOf(name: string): string[];
  /** Throws when the parent cgroup(s) are not writable any more. */
  check(): Promise<void>;
}

interface Mount {
  type: string;
  dir: string;
  options: string[];
}

function readMounts(mountsFile: string): Mount[] {
  return readFileSync(mountsFile, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const f = line.split(" ");
      return { type: f[2] ?? "", dir: unescapeMount(f[1] ?? ""), options: (f[3] ?? "").split(",") };
    });
}

/** /proc/mounts escapes space, tab, newline and backslash as octal. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

async function readInt(file: string, key?: string): Promise<number> {
  const text = await readFile(file, "utf8").catch(() => "");
  if (key === undefined) return Number.parseInt(text.trim(), 10) || 0;
  for (const line of text.split("\n")) {
    const [k, v] = line.trim().split(/\s+/);
    if (k === key) return Number.parseInt(v ?? "0", 10) || 0;
  }
  return 0;
}

async function listProcs(procsFile: string): Promise<number[]> {
  const text = await readFile(procsFile, "utf8").catch(() => "");
  return text
    .split("\n")
    .map((s) => Number.parseInt(s, 10))
    .filter((n) => Number.isInteger(n) && n > 0);
}

function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Kill loop shared by v1 and v2: a process may fork between read and kill, so repeat until empty. */
async function killUntilEmpty(procsFile: string, kill?: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const pids = await listProcs(procsFile);
    if (pids.length === 0) return;
    if (!(kill && (await kill()))) killPids(pids);
    await sleep(i < 10 ? 2 : 20);
  }
}

/** rmdir fails with EBUSY while killed tasks are still exiting; retry briefly. */
async function rmdirRetry(dir: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await rmdir(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return;
      if (i >= 50 || (code !== "EBUSY" && code !== "EAGAIN")) throw err;
      await sleep(i < 10 ? 5 : 50);
    }
  }
}

class V1Cgroup implements SandboxCgroup {
  readonly procsFiles: readonly string[];
  constructor(
    private readonly memDir: string,
    private readonly pidsDir: string,
  ) {
    this.procsFiles = [path.join(memDir, "cgroup.procs"), path.join(pidsDir, "cgroup.procs")];
  }

  async counters(): Promise<CgroupCounters> {
    const oomFile = path.join(this.memDir, "memory.oom_control");
    const text = await readFile(oomFile, "utf8").catch(() => "");
    // oom_kill exists since Linux 4.13; failcnt (limit reached at least once) is the fallback.
    const oomKills = /\boom_kill\b/.test(text)
      ? await readInt(oomFile, "oom_kill")
      : await readInt(path.join(this.memDir, "memory.failcnt"));
    return { oomKills, pidsMaxHits: await readInt(path.join(this.pidsDir, "pids.events"), "max") };
  }

  async killAll(): Promise<void> {
    // Both hierarchies hold the same processes; the pids one is always present.
    await killUntilEmpty(path.join(this.pidsDir, "cgroup.procs"));
    await killUntilEmpty(path.join(this.memDir, "cgroup.procs"));
  }

  async remove(): Promise<void> {
    await this.killAll();
    const results = await Promise.allSettled([rmdirRetry(this.memDir), rmdirRetry(this.pidsDir)]);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  }
}

class V2Cgroup implements SandboxCgroup {
  readonly procsFiles: readonly string[];
  constructor(private readonly dir: string) {
    this.procsFiles = [path.join(dir, "cgroup.procs")];
  }

  async counters(): Promise<CgroupCounters> {
    return {
      oomKills: await readInt(path.join(this.dir, "memory.events"), "oom_kill"),
      pidsMaxHits: await readInt(path.join(this.dir, "pids.events"), "max"),
    };
  }

  async killAll(): Promise<void> {
    // cgroup.kill (Linux 5.14+) kills atomically, forks included.
    const killFile = path.join(this.dir, "cgroup.kill");
    await killUntilEmpty(this.procsFiles[0]!, () =>
      writeFile(killFile, "1").then(
        () => true,
        () => false,
      ),
    );
  }

  async remove(): Promise<void> {
    await this.killAll();
    await rmdirRetry(this.dir);
  }
}

async function writeOptional(file: string, value: string): Promise<void> {
  try {
    await writeFile(file, value);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}

class V1Manager implements CgroupManager {
  readonly version = 1 as const;
  readonly parentDirs: readonly string[];
  constructor(
    private readonly memParent: string,
    private readonly pidsParent: string,
  ) {
    this.parentDirs = [memParent, pidsParent];
  }

  dirsOf(name: string): string[] {
    return [path.join(this.memParent, name), path.join(this.pidsParent, name)];
  }

  open(name: string): SandboxCgroup {
    const [memDir, pidsDir] = this.dirsOf(name) as [string, string];
    return new V1Cgroup(memDir, pidsDir);
  }

  async create(name: string, limits: CgroupLimits): Promise<SandboxCgroup> {
    const [memDir, pidsDir] = this.dirsOf(name) as [string, string];
    const cg = new V1Cgroup(memDir, pidsDir);
    try {
      await Promise.all([mkdir(memDir), mkdir(pidsDir)]);
      await writeFile(path.join(memDir, "memory.limit_in_bytes"), String(limits.memoryBytes));
      // memsw = memory + swap; equal to the memory limit means no swap. Absent without swap accounting.
      await writeOptional(path.join(memDir, "memory.memsw.limit_in_bytes"), String(limits.memoryBytes));
      await writeOptional(path.join(memDir, "memory.swappiness"), "0");
      await writeFile(path.join(pidsDir, "pids.max"), String(limits.pids));
      return cg;
    } catch (err) {
      await cg.remove().catch(() => undefined);
      throw err;
    }
  }

  async list(): Promise<string[]> {
    const [a, b] = await Promise.all([subdirs(this.memParent), subdirs(this.pidsParent)]);
    return [...new Set([...a, ...b])];
  }

  async check(): Promise<void> {
    await access(this.memParent, constants.W_OK);
    await access(this.pidsParent, constants.W_OK);
  }
}

class V2Manager implements CgroupManager {
  readonly version = 2 as const;
  readonly parentDirs: readonly string[];
  constructor(private readonly parent: string) {
    this.parentDirs = [parent];
  }

  dirsOf(name: string): string[] {
    return [path.join(this.parent, name)];
  }

  open(name: string): SandboxCgroup {
    return new V2Cgroup(path.join(this.parent, name));
  }

  async create(name: string, limits: CgroupLimits): Promise<SandboxCgroup> {
    const dir = path.join(this.parent, name);
    const cg = new V2Cgroup(dir);
    try {
      await mkdir(dir);
      await writeFile(path.join(dir, "memory.max"), String(limits.memoryBytes));
      await writeOptional(path.join(dir, "memory.swap.max"), "0");
      // Kill the whole sandbox on OOM instead of one task, like a container runtime does.
      await writeOptional(path.join(dir, "memory.oom.group"), "1");
      await writeFile(path.join(dir, "pids.max"), String(limits.pids));
      return cg;
    } catch (err) {
      await cg.remove().catch(() => undefined);
      throw err;
    }
  }

  async list(): Promise<string[]> {
    return subdirs(this.parent);
  }

  async check(): Promise<void> {
    await access(path.join(this.parent, "cgroup.subtree_control"), constants.W_OK);
  }
}

async function subdirs(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}

export interface DetectCgroupsOptions {
  /** Parent cgroup (relative to each hierarchy's mount) holding the sandbox cgroups. */
  parent: string;
  /** Force a version instead of auto-detecting. */
  version?: 1 | 2;
  /** For tests: an alternative mounts table. */
  mountsFile?: string;
}

function unavailable(message: string, cause?: unknown): ProviderError {
  return new ProviderError(ErrorCodes.CGROUP_UNAVAILABLE, message, { retryable: false, cause });
}

/** mkdir -p of the parent in v2, enabling memory+pids for children at every level. */
function prepareV2(mount: string, parent: string): string {
  let dir = mount;
  for (const seg of [".", ...parent.split("/").filter(Boolean)]) {
    dir = path.join(dir, seg);
    if (!existsSync(dir)) mkdirSync(dir);
    const controllers = readFileSync(path.join(dir, "cgroup.controllers"), "utf8").split(/\s+/);
    if (!controllers.includes("memory") || !controllers.includes("pids")) {
      throw new Error(`${dir} does not offer the memory and pids controllers (has: ${controllers.join(" ") || "none"})`);
    }
    const enabled = readFileSync(path.join(dir, "cgroup.subtree_control"), "utf8").split(/\s+/);
    if (!enabled.includes("memory") || !enabled.includes("pids")) {
      writeFileSync(path.join(dir, "cgroup.subtree_control"), "+memory +pids");
    }
  }
  return dir;
}

/**
 * Finds a usable cgroup setup. Prefers v2 when it offers memory and pids
 * (a pure v2 host), else v1 with separate memory and pids hierarchies.
 * Runs once at construction, so synchronous fs is fine here.
 */
export function detectCgroups(opts: DetectCgroupsOptions): CgroupManager {
  const parent = opts.parent;
  if (path.isAbsolute(parent) || parent.split("/").includes("..") || parent === "") {
    throw unavailable(`cgroup parent '${parent}' must be a relative path without '..'`);
  }
  let mounts: Mount[];
  try {
    mounts = readMounts(opts.mountsFile ?? "/proc/self/mounts");
  } catch (err) {
    throw unavailable("cannot read /proc/self/mounts to find cgroup hierarchies", err);
  }
  const problems: string[] = [];
  const v2 = mounts.find((m) => m.type === "cgroup2");
  if (v2 && opts.version !== 1) {
    try {
      return new V2Manager(prepareV2(v2.dir, parent));
    } catch (err) {
      problems.push(`cgroup v2 at ${v2.dir}: ${(err as Error).message}`);
    }
  } else if (opts.version !== 1) {
    problems.push("no cgroup2 mount");
  }
  if (opts.version !== 2) {
    const mem = mounts.find((m) => m.type === "cgroup" && m.options.includes("memory"));
    const pids = mounts.find((m) => m.type === "cgroup" && m.options.includes("pids"));
    if (mem && pids) {
      try {
        const memParent = path.join(mem.dir, parent);
        const pidsParent = path.join(pids.dir, parent);
        mkdirSync(memParent, { recursive: true });
        mkdirSync(pidsParent, { recursive: true });
        // Without use_hierarchy a child's limit would not count against the parent's.
        writeOptionalSync(path.join(memParent, "memory.use_hierarchy"), "1");
        return new V1Manager(memParent, pidsParent);
      } catch (err) {
        problems.push(`cgroup v1: ${(err as Error).message}`);
      }
    } else {
      problems.push(`cgroup v1: ${mem ? "" : "no memory hierarchy mounted"}${!mem && !pids ? ", " : ""}${pids ? "" : "no pids hierarchy mounted"}`);
    }
  }
  throw unavailable(
    `no usable cgroup (v1 or v2 with memory and pids controllers, writable by this process): ${problems.join("; ")}`,
  );
}

function writeOptionalSync(file: string, value: string): void {
  try {
    writeFileSync(file, value);
  } catch {
    // Not fatal: set by the parent already, or not settable once children exist.
  }
}
