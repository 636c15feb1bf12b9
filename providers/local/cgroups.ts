/**
 * Per-sandbox cgroups, v1 or v2 behind one interface.
 *
 * The kernel enforces the limits (memory, pids); we only read its counters
 * afterwards to say which limit was hit. Detection happens once, at provider
 * construction, from /proc/self/mounts.
 */
import { readFileSync, existsSync, mkdirSync, writeFileSync, rmdirSync, readdirSync } from "node:fs";
import { access, constants } from "node:fs/promises";
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

/** One write into a cgroup file. */
export interface CgroupWrite {
  file: string;
  value: string;
  /** Absent files (no swap accounting, older kernels) are skipped. */
  optional: boolean;
}

/** The cgroup of one exec: the limits live here, the process joins here. */
export interface ExecCgroup {
  /**
   * How the spawn helper starts a process inside the exec's cgroup: it performs
   * `limits`, moves itself into `procs` (one cgroup.procs per hierarchy),
   * spawns, and moves back to `home`. The child starts inside the limits
   * without a wrapper process of its own.
   *
   * `oom` (cgroup v1 only): the files through which the helper asks the
   * kernel for an eventfd notification of each OOM in the cgroup. v1 has no
   * memory.oom.group, so the worker ends the whole exec on the first one;
   * on v2 the kernel kills the whole cgroup itself.
   */
  readonly join: {
    limits: readonly CgroupWrite[];
    procs: readonly string[];
    home: readonly string[];
    oom?: { control: string; eventControl: string };
  };
  counters(): Promise<CgroupCounters>;
  /** SIGKILLs every process in the cgroup until it is empty (or gives up). */
  killAll(): Promise<void>;
  /** Kills what is left and removes the cgroup (a leaf; the sandbox cgroup goes with the sandbox). */
  remove(): Promise<void>;
}

/**
 * The cgroup of one sandbox. The first exec runs in it; each later exec in a
 * fresh leaf below it: the kernel uncharges exited tasks from pids.current
 * only some time after they are gone, so a limit reused by quick successive
 * execs would count ghosts. Either way an exec's counters start at zero.
 */
export interface SandboxCgroup {
  newExec(): Promise<ExecCgroup>;
  /**
   * New limits for the execs made from now on and for the newest one
   * (a pre-started sandbox gets its job's limits before the job runs).
   */
  setLimits(limits: CgroupLimits): void;
  /** Kills every process of every exec. */
  killAll(): Promise<void>;
  /** Kills what is left and removes the sandbox cgroup and its leaves. Idempotent. */
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

/**
 * cgroupfs is an in-kernel pseudo filesystem: each call costs microseconds,
 * far less than a round trip through libuv's thread pool, so cgroup files
 * are read and written synchronously. (Workspace trees stay asynchronous.)
 */
function readText(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

async function readInt(file: string, key?: string): Promise<number> {
  const text = readText(file);
  if (key === undefined) return Number.parseInt(text.trim(), 10) || 0;
  for (const line of text.split("\n")) {
    const [k, v] = line.trim().split(/\s+/);
    if (k === key) return Number.parseInt(v ?? "0", 10) || 0;
  }
  return 0;
}

/** The pids listed in a cgroup.procs file (none when it is gone). */
export function readProcs(procsFile: string): number[] {
  return readText(procsFile)
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
    const pids = readProcs(procsFile);
    if (pids.length === 0) return;
    if (!(kill && (await kill()))) killPids(pids);
    await sleep(i < 10 ? 2 : 20);
  }
}

/** rmdir fails with EBUSY while killed tasks are still exiting; retry briefly. */
async function rmdirRetry(dir: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return;
      if (i >= 60 || (code !== "EBUSY" && code !== "EAGAIN")) throw err;
      await sleep(i < 10 ? 1 : 50);
    }
  }
}

/** Depth-first: kill and remove the children, then the cgroup itself. */
async function removeTree(dir: string, v2: boolean): Promise<void> {
  for (const child of await subdirs(dir)) await removeTree(path.join(dir, child), v2);
  await killTree(dir, v2, false);
  await rmdirRetry(dir);
}

async function killTree(dir: string, v2: boolean, recurse = true): Promise<void> {
  if (v2) {
    // cgroup.kill (Linux 5.14+) kills the whole subtree atomically, forks included.
    const killFile = path.join(dir, "cgroup.kill");
    const kill = async (): Promise<boolean> => {
      try {
        writeFileSync(killFile, "1");
        return true;
      } catch {
        return false;
      }
    };
    await killUntilEmpty(path.join(dir, "cgroup.procs"), kill);
  } else {
    await killUntilEmpty(path.join(dir, "cgroup.procs"));
  }
  if (!recurse) return;
  for (const child of await subdirs(dir)) await killTree(path.join(dir, child), v2);
}

interface Hierarchies {
  /** Directory of this cgroup in the memory hierarchy and in the pids one (the same dir on v2). */
  mem: string;
  pids: string;
  v2: boolean;
}

function uniqueDirs(h: Hierarchies): string[] {
  return h.mem === h.pids ? [h.mem] : [h.mem, h.pids];
}

async function mkdirAll(h: Hierarchies): Promise<void> {
  for (const d of uniqueDirs(h)) mkdirSync(d);
}

/** rmdir of each dir; true when all are gone. */
function rmdirAll(dirs: string[]): boolean {
  let ok = true;
  for (const d of dirs) {
    try {
      rmdirSync(d);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") ok = false;
    }
  }
  return ok;
}

/**
 * The writes that give a leaf its limits, in order. `resize`: the leaf has
 * limits already, so only the values that depend on them are written (the
 * no-swap and OOM settings stay), and on v1 memory <= memory+swap must hold
 * at every step: memsw is lifted first, then memory set, then memsw matched.
 */
/** Performs writes in order; a missing optional file (a controller feature the kernel lacks) is skipped. */
function applyWrites(writes: readonly CgroupWrite[]): void {
  for (const w of writes) {
    try {
      writeFileSync(w.file, w.value);
    } catch (err) {
      if (!(w.optional && (err as NodeJS.ErrnoException).code === "ENOENT")) throw err;
    }
  }
}

function limitWrites(h: Hierarchies, limits: CgroupLimits, resize: boolean): CgroupWrite[] {
  const bytes = String(limits.memoryBytes);
  const w = (dir: string, file: string, value: string, optional = false): CgroupWrite => ({ file: path.join(dir, file), value, optional });
  const fixed = resize ? [] : h.v2
    ? [w(h.mem, "memory.swap.max", "0", true), w(h.mem, "memory.oom.group", "1", true)]
    : [w(h.mem, "memory.swappiness", "0", true)];
  return [
    ...(h.v2
      ? [w(h.mem, "memory.max", bytes)]
      : [
          ...(resize ? [w(h.mem, "memory.memsw.limit_in_bytes", "-1", true)] : []),
          w(h.mem, "memory.limit_in_bytes", bytes),
          // memsw = memory + swap: equal to the memory limit means no swap (absent without swap accounting).
          w(h.mem, "memory.memsw.limit_in_bytes", bytes, true),
        ]),
    ...fixed,
    w(h.pids, "pids.max", String(limits.pids)),
  ];
}

class LeafCgroup implements ExecCgroup {
  join: ExecCgroup["join"] = { limits: [], procs: [], home: [] };
  /**
   * `leaf`: nobody can create cgroups below it (sandbox code has no access), so no recursion.
   * `own`: the directory is this exec's alone and goes with it; the first exec of a
   * sandbox runs in the sandbox cgroup itself, which the sandbox removes.
   */
  constructor(
    private readonly h: Hierarchies,
    private readonly leaf: boolean,
    private readonly own = true,
  ) {
  }

  async counters(): Promise<CgroupCounters> {
    const { h } = this;
    const pidsMaxHits = readInt(path.join(h.pids, "pids.events"), "max");
    if (h.v2) return { oomKills: await readInt(path.join(h.mem, "memory.events"), "oom_kill"), pidsMaxHits: await pidsMaxHits };
    const oomFile = path.join(h.mem, "memory.oom_control");
    const text = readText(oomFile);
    // oom_kill exists since Linux 4.13; failcnt (limit reached at least once) is the fallback.
    const m = /\boom_kill\s+(\d+)/.exec(text);
    const oomKills = m ? Number(m[1]) : await readInt(path.join(h.mem, "memory.failcnt"));
    return { oomKills, pidsMaxHits: await pidsMaxHits };
  }

  async killAll(): Promise<void> {
    // An exec's processes joined every hierarchy and their children inherit
    // them, so on a leaf the pids hierarchy alone lists them all.
    if (this.leaf) return killTree(this.h.pids, this.h.v2, false);
    await Promise.all(uniqueDirs(this.h).map((d) => killTree(d, this.h.v2)));
  }

  async remove(): Promise<void> {
    if (!this.own) return this.killAll();
    if (this.leaf) {
      // Normally empty by now: try the rmdir first, kill and retry only if it is busy.
      if (rmdirAll(uniqueDirs(this.h))) return;
      await this.killAll();
    }
    const remove = (d: string) => (this.leaf ? rmdirRetry(d) : removeTree(d, this.h.v2));
    const results = await Promise.allSettled(uniqueDirs(this.h).map(remove));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  }
}

class SandboxCgroupImpl implements SandboxCgroup {
  private seq = 0;
  /** Set once the first exec is over and the sandbox cgroup may hold leaves (see becomeParentOfLeaves). */
  private parentOfLeaves = false;
  private readonly node: LeafCgroup;
  private newest: Hierarchies | null = null;
  constructor(
    private readonly h: Hierarchies,
    private limits: CgroupLimits,
    private readonly home: readonly string[] = [],
  ) {
    this.node = new LeafCgroup(h, false);
  }

  /** Creates the sandbox cgroup; the limits are set by each exec (one exec runs at a time). */
  async create(): Promise<void> {
    await mkdirAll(this.h);
  }

  /**
   * The first exec runs in the sandbox cgroup itself: nearly every sandbox
   * runs one, and a leaf of its own would cost one more mkdir and rmdir per
   * hierarchy (~0.2 ms of kernel time per job on v1). Later execs get fresh
   * leaves below it.
   */
  async newExec(): Promise<ExecCgroup> {
    const n = ++this.seq;
    if (n > 1 && !this.parentOfLeaves) {
      await this.becomeParentOfLeaves();
      this.parentOfLeaves = true;
    }
    const h: Hierarchies = n === 1 ? this.h : { mem: path.join(this.h.mem, `x${n}`), pids: path.join(this.h.pids, `x${n}`), v2: this.h.v2 };
    const leaf = new LeafCgroup(h, true, n > 1);
    leaf.join = {
      limits: limitWrites(h, this.limits, false),
      procs: uniqueDirs(h).map((d) => path.join(d, "cgroup.procs")),
      home: this.home,
      ...(h.v2 ? {} : { oom: { control: path.join(h.mem, "memory.oom_control"), eventControl: path.join(h.mem, "cgroup.event_control") } }),
    };
    if (n > 1) {
      try {
        await mkdirAll(h);
      } catch (err) {
        await leaf.remove().catch(() => undefined);
        throw err;
      }
    }
    this.newest = h;
    return leaf;
  }

  /**
   * Before the first leaf: the first exec's processes are gone (v2 allows no
   * process beside enabled child controllers), and the sandbox cgroup's own
   * limits are lifted, so that the first exec's exited tasks, which the kernel
   * uncharges only later, do not count against the next exec's pids limit.
   */
  private async becomeParentOfLeaves(): Promise<void> {
    await killTree(this.h.pids, this.h.v2, false);
    const { mem, pids, v2 } = this.h;
    const w = (dir: string, file: string, value: string, optional = false): CgroupWrite => ({ file: path.join(dir, file), value, optional });
    applyWrites([
      w(pids, "pids.max", "max"),
      ...(v2
        ? [w(mem, "memory.max", "max"), w(mem, "cgroup.subtree_control", "+memory +pids")]
        : // memory <= memory+swap at every step: memsw (absent without swap accounting) goes first.
          [w(mem, "memory.memsw.limit_in_bytes", "-1", true), w(mem, "memory.limit_in_bytes", "-1")]),
    ]);
  }

  setLimits(limits: CgroupLimits): void {
    this.limits = limits;
    if (this.newest) applyWrites(limitWrites(this.newest, limits, true));
  }

  killAll(): Promise<void> {
    return this.node.killAll();
  }

  async remove(): Promise<void> {
    // Usually every leaf is gone already: a plain rmdir suffices, the tree walk is the fallback.
    if (rmdirAll(uniqueDirs(this.h))) return;
    await this.node.remove();
  }
}


class Manager implements CgroupManager {
  readonly version: 1 | 2;
  readonly parentDirs: readonly string[];
  constructor(
    private readonly memParent: string,
    private readonly pidsParent: string,
    /** cgroup.procs of this process's own cgroups, where the spawn helper returns after each spawn. */
    private readonly home: readonly string[] = [],
  ) {
    this.version = memParent === pidsParent ? 2 : 1;
    this.parentDirs = this.version === 2 ? [memParent] : [memParent, pidsParent];
  }

  private hierarchies(name: string): Hierarchies {
    return { mem: path.join(this.memParent, name), pids: path.join(this.pidsParent, name), v2: this.version === 2 };
  }

  dirsOf(name: string): string[] {
    return uniqueDirs(this.hierarchies(name));
  }

  open(name: string): SandboxCgroup {
    return new SandboxCgroupImpl(this.hierarchies(name), { memoryBytes: 0, pids: 0 });
  }

  async create(name: string, limits: CgroupLimits): Promise<SandboxCgroup> {
    const cg = new SandboxCgroupImpl(this.hierarchies(name), limits, this.home);
    try {
      await cg.create();
      return cg;
    } catch (err) {
      await cg.remove().catch(() => undefined);
      throw err;
    }
  }

  async list(): Promise<string[]> {
    const all = await Promise.all(this.parentDirs.map(subdirs));
    return [...new Set(all.flat())];
  }

  async check(): Promise<void> {
    for (const d of this.parentDirs) await access(path.join(d, "cgroup.procs"), constants.W_OK);
  }
}

async function subdirs(dir: string): Promise<string[]> {
  let entries: import("node:fs").Dirent[] = [];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    // gone already
  }
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}

/**
 * cgroup.procs of this process's own cgroup in a hierarchy (`controller`
 * "" for v2), from /proc/self/cgroup, whose paths are relative to the mount.
 */
function homeProcs(mountDir: string, controller: string): string {
  for (const line of readFileSync("/proc/self/cgroup", "utf8").split("\n")) {
    const [, controllers, rel] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    if (rel !== undefined && (controller === "" ? controllers === "" : controllers!.split(",").includes(controller))) {
      return path.join(mountDir, rel, "cgroup.procs");
    }
  }
  throw new Error(`this process is in no ${controller || "v2"} cgroup (/proc/self/cgroup)`);
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
      const dir = prepareV2(v2.dir, parent);
      return new Manager(dir, dir, [homeProcs(v2.dir, "")]);
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
        return new Manager(memParent, pidsParent, [homeProcs(mem.dir, "memory"), homeProcs(pids.dir, "pids")]);
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
