/**
 * LocalProvider: sandboxes on this machine with bubblewrap + cgroups.
 *
 * Layout on the host, per sandbox `sq-<ownerPid>-<random>`:
 *   <workRoot>/<id>/owner.json   owner pid + labels (outside the workspace, so
 *                                sandbox code cannot forge it)
 *   <workRoot>/<id>/workspace/   bound read-write at /workspace
 *   <workRoot>/<id>/egress/      network "proxy" only: bound read-only at
 *                                /sandqueue-egress (CA bundle, proxy socket)
 *   <cgroup mount>/<cgroupParent>/<id>   (per hierarchy on v1)
 * The owner pid in the name lets reap() find sandboxes of dead workers.
 *
 * Pre-start pool: with `prestart` > 0 the provider keeps that many sandboxes
 * per recently used image with their bwrap already started (launcher waiting
 * for its request), so a job does not wait for bwrap's namespace and mount
 * setup. A pooled sandbox still serves exactly one job: the pool only moves
 * creation off the job's path, as the docker provider's warm pool does.
 */
import { accessSync, constants as fsConstants, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { access, readdir, rm, constants } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import os from "node:os";
import path from "node:path";
import { throwIfAcquireAborted } from "../abort.js";
import { ownershipLabels, type OwnerLiveness, type ProviderCapabilities, type Sandbox, type SandboxProvider, type SandboxSpec } from "../provider.js";
import { DEFAULT_ARCHIVE_LIMITS, type ArchiveLimits } from "../archive/index.js";
import { ErrorCodes, ProviderError, isSandqueueError } from "../../errors/index.js";
import { detectCgroups, type CgroupLimits, type CgroupManager, type SandboxCgroup } from "./cgroups.js";
import { HOST_IMAGE, dirImageOps, hostImageOps } from "./image-root.js";
import { LocalSandbox } from "./local-sandbox.js";
import { localDefinition } from "./definition.js";
import { Spawner } from "./spawner.js";
import { seccompProgram } from "./seccomp.js";
import { mountWorkRootTmpfs, type WorkRootMount } from "./workspace-mount.js";
import { removeTree } from "./remove-tree.js";

export interface LocalProviderOptions {
  /** Where sandbox workspaces live. Default: `os.tmpdir()/sandqueue-work`. */
  workRoot?: string;
  /** Root filesystems of non-`host` images: `<imagesDir>/<image>`. */
  imagesDir?: string;
  /** Parent cgroup, relative to each hierarchy's mount. Default `sandqueue`. */
  cgroupParent?: string;
  /** Force cgroup v1 or v2 instead of detecting. */
  cgroupVersion?: 1 | 2;
  /** Default: `bwrap` found on PATH. */
  bwrapPath?: string;
  /** Unprivileged ids sandbox code runs as inside its user namespace. Default 1000. */
  uid?: number;
  gid?: number;
  /** Size cap of the private /tmp, MiB. Default: none (tmpfs pages count against memoryMb anyway). */
  tmpSizeMb?: number;
  /** Limits applied to putArchive() input. */
  archiveLimits?: Partial<ArchiveLimits>;
  /**
   * Mount a tmpfs over `workRoot` (unless it is one already) so workspaces
   * count against each sandbox's memoryMb and never fill the host disk
   * (workspace-mount.ts). Default true; needs root. `sizeMb` caps the whole
   * tmpfs (default: the kernel's, half of RAM).
   */
  workspaceTmpfs?: boolean | { sizeMb?: number };
  /** Pre-started sandboxes kept per recently used image. Default 0 (none). */
  prestart?: number;
  /** Runs the spawn helper (spawner.py). Default: /usr/bin/python3, else `python3` on PATH. */
  pythonPath?: string;
  /** The owning worker's id, recorded (as ownership labels) in each sandbox's owner.json. */
  owner?: string;
}

const SYSTEM_PYTHON = "/usr/bin/python3";

/** Images the pre-start pool keeps sandboxes for: the most recently used ones. */
const PRESTART_IMAGES = 4;
/** Limits of a pre-started sandbox until a job adopts it: only the launcher runs meanwhile. */
const PRESTART_LIMITS = { memoryMb: 64, pids: 16 };

/** Processes bwrap itself keeps in the cgroup: its monitor and the namespace's pid 1. */
export const BWRAP_OVERHEAD_PIDS = 2;

const SANDBOX_NAME = /^sq-(\d+)-[0-9a-f]{12}$/;
/** Files of one provider instance in the work root: the host image's /etc and the seccomp program. */
const PROVIDER_FILE_NAME = /^\.(?:host-etc|seccomp)-(\d+)-[0-9a-f]{12}$/;
const MiB = 1024 * 1024;
const MAX_MEMORY_MB = 1024 * 1024 * 1024;
/** pids.max accepts at most PID_MAX_LIMIT + 1 (4194305), bwrap's own processes included. */
const MAX_PIDS = 4_194_304 - BWRAP_OVERHEAD_PIDS;

function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(":")) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** A sandbox's limits as its cgroup holds them: bwrap's own processes come on top of the job's pids. */
function cgroupLimits(limits: { memoryMb: number; pids: number }): CgroupLimits {
  return { memoryBytes: limits.memoryMb * MiB, pids: limits.pids + BWRAP_OVERHEAD_PIDS };
}

/**
 * Sandboxes of every LocalProvider of this process, from the start of their
 * creation until their release has run. Sandbox names carry only the pid,
 * and providers of one process share the cgroup parent (a worker runtime per
 * queue, the bench, tests): reap() must not take another instance's
 * sandboxes, or one being created, for leftovers of this process.
 */
const heldInProcess = new Set<string>();

function newSandboxId(): string {
  return `sq-${process.pid}-${randomBytes(6).toString("hex")}`;
}

function positiveInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v > 0;
}

export class LocalProvider implements SandboxProvider {
  readonly name = "local";
  readonly capabilities: ProviderCapabilities = localDefinition.capabilities;

  readonly workRoot: string;
  private readonly imagesDir: string | undefined;
  private readonly bwrapPath: string;
  private readonly cgroups: CgroupManager;
  private readonly hostOps: string[];
  private readonly hostEtcDir: string;
  /** The compiled seccomp program, written once; bwrap reads it from fd 4 at every start. */
  private readonly seccompFile: string;
  private readonly uid: number;
  private readonly gid: number;
  private readonly tmpSizeBytes: number | undefined;
  private readonly archiveLimits: ArchiveLimits;
  private readonly live = new Map<string, LocalSandbox>();
  private closing: Promise<void> | null = null;
  private readonly workMount: WorkRootMount | null;
  private readonly spawner: Spawner;
  private readonly prestartCount: number;
  /** Ownership labels every sandbox of this provider carries (owner.json). */
  private readonly ownerLabels: Record<string, string>;
  /** Idle pre-started sandboxes per image, most recently used image last. */
  private readonly warm = new Map<string, LocalSandbox[]>();
  private filling: Promise<void> | null = null;
  /** Ids of pool sandboxes being created and started. */
  private readonly starting = new Set<string>();
  /**
   * Acquires and pool creates under way, from their first await on: close()
   * waits for them, so none creates a sandbox after close's release loop and
   * leaves its directory (and the work root's tmpfs) behind.
   */
  private readonly inFlight = new Set<Promise<unknown>>();

  /** Throws CGROUP_UNAVAILABLE or PROVIDER_UNAVAILABLE when this machine cannot sandbox. */
  constructor(opts: LocalProviderOptions = {}) {
    const bwrap = opts.bwrapPath ?? findOnPath("bwrap");
    if (!bwrap || !existsSync(bwrap)) {
      throw new ProviderError(
        ErrorCodes.PROVIDER_UNAVAILABLE,
        `bubblewrap not found (${opts.bwrapPath ?? "no 'bwrap' on PATH"}); install the 'bubblewrap' package`,
        { retryable: false },
      );
    }
    this.bwrapPath = bwrap;
    // The distribution's python first (what setup installs): a version manager's shim on PATH adds its own start-up.
    const python = opts.pythonPath ?? (existsSync(SYSTEM_PYTHON) ? SYSTEM_PYTHON : findOnPath("python3"));
    if (!python || !existsSync(python)) {
      throw new ProviderError(
        ErrorCodes.PROVIDER_UNAVAILABLE,
        `python3 not found (${opts.pythonPath ?? "no 'python3' on PATH"}); the local provider's spawn helper needs it: install the 'python3-minimal' package`,
        { retryable: false },
      );
    }
    this.spawner = new Spawner(python);
    this.prestartCount = opts.prestart ?? 0;
    this.ownerLabels = opts.owner === undefined ? {} : ownershipLabels(opts.owner);
    this.cgroups = detectCgroups({ parent: opts.cgroupParent ?? "sandqueue", version: opts.cgroupVersion });
    this.workRoot = path.resolve(opts.workRoot ?? path.join(os.tmpdir(), "sandqueue-work"));
    mkdirSync(this.workRoot, { recursive: true, mode: 0o700 });
    // Before anything is written there: the /etc copy below lives on it too.
    const tmpfs = opts.workspaceTmpfs ?? true;
    this.workMount = tmpfs === false ? null : mountWorkRootTmpfs(this.workRoot, tmpfs === true ? {} : tmpfs);
    this.imagesDir = opts.imagesDir === undefined ? undefined : path.resolve(opts.imagesDir);
    // Per provider instance (several may share a work root); removed by close(), or by reap() once the owner is dead.
    const instance = `${process.pid}-${randomBytes(6).toString("hex")}`;
    this.hostEtcDir = path.join(this.workRoot, `.host-etc-${instance}`);
    this.seccompFile = path.join(this.workRoot, `.seccomp-${instance}`);
    try {
      this.hostOps = hostImageOps(this.hostEtcDir);
      writeFileSync(this.seccompFile, seccompProgram(), { mode: 0o600 });
    } catch (err) {
      this.workMount?.close(); // a no-op unless the tmpfs is still empty
      throw err;
    }
    this.uid = opts.uid ?? 1000;
    this.gid = opts.gid ?? 1000;
    this.tmpSizeBytes = opts.tmpSizeMb === undefined ? undefined : opts.tmpSizeMb * MiB;
    this.archiveLimits = { ...DEFAULT_ARCHIVE_LIMITS, ...opts.archiveLimits };
    this.spawner.warmUp(); // last: a constructor that throws leaves no helper behind
  }

  get cgroupVersion(): 1 | 2 {
    return this.cgroups.version;
  }

  /** Parent cgroup directories holding the sandbox cgroups (one per v1 hierarchy). */
  get cgroupParentDirs(): readonly string[] {
    return this.cgroups.parentDirs;
  }

  acquire(spec: SandboxSpec, opts: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    if (this.closing) return Promise.reject(new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "local provider is closed", { retryable: true }));
    return this.track(this.acquireOpen(spec, opts));
  }

  private async acquireOpen(spec: SandboxSpec, opts: { signal?: AbortSignal }): Promise<Sandbox> {
    const { memoryMb, pids } = spec.limits;
    // Upper bounds keep the byte count exact and inside what cgroup files parse (an overflow would wrap).
    if (!positiveInt(memoryMb) || !positiveInt(pids) || memoryMb > MAX_MEMORY_MB || pids > MAX_PIDS) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `invalid sandbox limits: memoryMb=${memoryMb}, pids=${pids}`, { retryable: false });
    }
    if (spec.network !== "none" && spec.network !== "proxy") {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `network mode '${String(spec.network)}' is not supported (none, proxy)`, { retryable: false });
    }
    const egress = spec.network === "proxy";
    throwIfAcquireAborted(opts.signal);
    // Pool sandboxes have no egress directory bound: a job with a policy gets a fresh one.
    const warm = egress ? null : this.takeWarm(spec);
    if (warm) return warm;
    // Resolved before anything is created: an unknown image costs nothing.
    const rootOps = spec.image === HOST_IMAGE ? this.hostOps : await dirImageOps(this.imagesDir, spec.image);
    const sandbox = await this.create(newSandboxId(), spec.image, rootOps, spec.limits, spec.labels, opts.signal, egress);
    this.scheduleFill(spec.image);
    return sandbox;
  }

  /** A pre-started sandbox of this image, given the job's limits and labels; null when none is ready. */
  private takeWarm(spec: SandboxSpec): LocalSandbox | null {
    if (this.prestartCount <= 0) return null;
    const idle = this.warm.get(spec.image);
    if (!idle) return null;
    // Most recently used image last: the pool keeps the latest few.
    this.warm.delete(spec.image);
    this.warm.set(spec.image, idle);
    this.scheduleFill(spec.image);
    for (let box = idle.shift(); box; box = idle.shift()) {
      try {
        box.adopt(
          cgroupLimits(spec.limits),
          JSON.stringify({ pid: process.pid, labels: { ...this.ownerLabels, ...spec.labels }, annotations: spec.annotations, image: spec.image }),
        );
        return box;
      } catch {
        void box.release().catch(() => undefined); // e.g. limits below what its launcher uses: try the next
      }
    }
    return null;
  }

  /** Refills the pre-start pool in the background, one sandbox at a time (the running jobs come first). */
  private scheduleFill(image: string): void {
    if (this.prestartCount <= 0 || this.closing) return;
    if (!this.warm.has(image)) {
      this.warm.set(image, []);
      while (this.warm.size > PRESTART_IMAGES) {
        const [oldest, boxes] = this.warm.entries().next().value as [string, LocalSandbox[]];
        this.warm.delete(oldest);
        for (const b of boxes) void b.release().catch(() => undefined);
      }
    }
    this.filling ??= new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.fill())
      .finally(() => (this.filling = null));
  }

  private async fill(): Promise<void> {
    for (;;) {
      if (this.closing) return;
      const entry = [...this.warm.entries()].reverse().find(([, idle]) => idle.length < this.prestartCount);
      if (!entry) return;
      const [image, idle] = entry;
      try {
        const rootOps = image === HOST_IMAGE ? this.hostOps : await dirImageOps(this.imagesDir, image);
        const id = newSandboxId();
        this.starting.add(id);
        try {
          const box = await this.create(id, image, rootOps, PRESTART_LIMITS, {});
          await box.prestart();
          if (this.closing || this.warm.get(image) !== idle) await box.release();
          else idle.push(box);
        } finally {
          this.starting.delete(id);
        }
      } catch {
        // The image vanished or the machine is short of something: jobs create their own sandboxes meanwhile.
        return;
      }
    }
  }

  private create(...args: Parameters<LocalProvider["createSandbox"]>): Promise<LocalSandbox> {
    return this.track(this.createSandbox(...args));
  }

  /** Registers work close() must wait for. */
  private track<T>(work: Promise<T>): Promise<T> {
    const settled = work.then(
      () => undefined,
      () => undefined,
    );
    this.inFlight.add(settled);
    void settled.then(() => this.inFlight.delete(settled));
    return work;
  }

  private async createSandbox(
    id: string,
    image: string,
    rootOps: readonly string[],
    limits: { memoryMb: number; pids: number },
    labels: Record<string, string>,
    signal?: AbortSignal,
    egress = false,
  ): Promise<LocalSandbox> {
    const sandboxDir = path.join(this.workRoot, id);
    const workspaceHostDir = path.join(sandboxDir, "workspace");
    const egressHostDir = egress ? path.join(sandboxDir, "egress") : undefined;
    // Undone last-in-first-out when a later step fails.
    const releasers: Array<() => Promise<unknown>> = [];
    heldInProcess.add(id);
    try {
      // Three metadata calls: synchronous is cheaper than three thread-pool round trips.
      mkdirSync(sandboxDir, { mode: 0o700 });
      releasers.push(() => removeTree(sandboxDir));
      writeFileSync(path.join(sandboxDir, "owner.json"), JSON.stringify({ pid: process.pid, labels: { ...this.ownerLabels, ...labels }, image }));
      mkdirSync(workspaceHostDir, { mode: 0o755 });
      if (egressHostDir) mkdirSync(egressHostDir, { mode: 0o755 });
      const cgroup: SandboxCgroup = await this.cgroups.create(id, cgroupLimits(limits));
      releasers.push(() => cgroup.remove());
      throwIfAcquireAborted(signal);
      const sandbox = new LocalSandbox({
        id,
        sandboxDir,
        workspaceHostDir,
        rootOps,
        cgroup,
        spawner: this.spawner,
        seccompFile: this.seccompFile,
        bwrapPath: this.bwrapPath,
        uid: this.uid,
        gid: this.gid,
        tmpSizeBytes: this.tmpSizeBytes,
        archiveLimits: this.archiveLimits,
        ...(egressHostDir ? { egressHostDir } : {}),
        onReleased: () => {
          this.live.delete(id);
          heldInProcess.delete(id);
        },
      });
      this.live.set(id, sandbox);
      return sandbox;
    } catch (err) {
      for (const release of releasers.reverse()) await release().catch(() => undefined);
      heldInProcess.delete(id);
      if (isSandqueueError(err)) throw err;
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `could not create sandbox: ${(err as Error).message}`, {
        retryable: true,
        cause: err,
      });
    }
  }

  async check(): Promise<void> {
    try {
      await access(this.bwrapPath, constants.X_OK);
      await access(this.workRoot, constants.W_OK);
      await this.cgroups.check();
    } catch (err) {
      throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `local provider not ready: ${(err as Error).message}`, {
        retryable: true,
        cause: err,
      });
    }
  }

  /** Ids of the pre-started sandboxes waiting in the pool. */
  get idleSandboxes(): string[] {
    return [...this.warm.values()].flat().map((b) => b.id);
  }

  readySandboxes(): Record<string, number> {
    return Object.fromEntries([...this.warm].map(([image, idle]) => [image, idle.length]));
  }

  /** Pool sandboxes: waiting, or being started. */
  private poolIds(): Set<string> {
    return new Set([...this.idleSandboxes, ...this.starting]);
  }

  /**
   * Host resources held right now by sandboxes other than the idle
   * pre-started ones (workspace directories and cgroup directories): what a
   * job left behind shows up here. For tests and operators.
   */
  async resources(): Promise<string[]> {
    const pool = this.poolIds();
    const mine = (n: string) => SANDBOX_NAME.test(n) && !pool.has(n);
    const dirs = (await readdir(this.workRoot).catch(() => [] as string[])).filter(mine);
    // The cgroup parent is shared by every provider on the host: only this process's count.
    const cgroups = (await this.cgroups.list()).filter((n) => mine(n) && n.startsWith(`sq-${process.pid}-`));
    return [...dirs.map((n) => path.join(this.workRoot, n)), ...cgroups.flatMap((n) => this.cgroups.dirsOf(n).filter(existsSync))].sort();
  }

  /**
   * Removes sandboxes whose owner process is gone, and this process's own
   * that no provider holds any more (a release that could not finish).
   * Every local sandbox lives on this host, so its owner's pid (in its name)
   * is the authority: heartbeats (`_owners`) add nothing here, and a live
   * worker's sandboxes are never touched.
   */
  async reap(_owners?: OwnerLiveness): Promise<number> {
    const names = new Set<string>([
      ...(await readdir(this.workRoot).catch(() => [] as string[])),
      ...(await this.cgroups.list()),
    ]);
    let count = 0;
    // One leftover that cannot be removed must not shelter the others: all are
    // tried, then the failures are reported together (the next reap retries them).
    const failures: string[] = [];
    for (const name of names) {
      try {
        const own = PROVIDER_FILE_NAME.exec(name);
        // Not a sandbox, not counted: the /etc copy or seccomp file of a dead provider.
        if (own && Number(own[1]) !== process.pid && !pidAlive(Number(own[1]))) {
          await removeTree(path.join(this.workRoot, name));
        }
        const m = SANDBOX_NAME.exec(name);
        if (!m || heldInProcess.has(name)) continue;
        const ownerPid = Number(m[1]);
        if (ownerPid !== process.pid && pidAlive(ownerPid)) continue;
        await this.cgroups.open(name).remove();
        await removeTree(path.join(this.workRoot, name));
        count++;
      } catch (err) {
        failures.push(`${name}: ${(err as Error).message}`);
      }
    }
    if (failures.length > 0) {
      throw new ProviderError(
        ErrorCodes.PROVIDER_FAILED,
        `reap removed ${count} sandbox(es) but could not remove ${failures.length} leftover(s), left for the next reap: ${failures.slice(0, 3).join("; ")}${failures.length > 3 ? "; ..." : ""}`,
        { retryable: true },
      );
    }
    return count;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.filling;
      // An acquire or create that was under way ends in `live` (released below) or cleaned up.
      await Promise.all(this.inFlight);
      this.warm.clear();
      const results = await Promise.allSettled([
        ...[...this.live.values()].map((s) => s.release()),
        removeTree(this.hostEtcDir),
        rm(this.seccompFile, { force: true }),
      ]);
      this.spawner.close();
      this.workMount?.close();
      const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed) throw failed.reason;
    })();
    return this.closing;
  }
}
