/**
 * DockerProvider: one container per sandbox through the Docker Engine API
 * (Docker, or Podman's compatible service). See docs/PROVIDERS.md.
 */
import type { ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { destroyOnAbort, guardPut, rethrowAborted, throwIfAcquireAborted, throwIfTransferAborted } from "../abort.js";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { DEFAULT_ARCHIVE_LIMITS, normalizeTar, validateTar, type ArchiveLimits, type PackOptions } from "../archive/index.js";
import {
  WORKSPACE_DIR,
  type ExecRequest,
  type ExecResult,
  type ProviderCapabilities,
  type Sandbox,
  type SandboxProvider,
  type SandboxSpec,
  type SandboxEgress,
  type OwnerLiveness,
  LABEL_MANAGED_BY,
  LABEL_WORKER,
  MANAGED_BY,
  labelSafe,
  ownershipLabels,
} from "../provider.js";
import { EngineClient, EngineHttpError, parseDockerHost, readAll } from "./engine-client.js";
import { imageNotFound, translateEngineError, type EngineErrorContext } from "./engine-errors.js";
import { podmanProfilePath } from "./seccomp-profile.js";
import { parseCounters, runExec, type Counters, type ExecTarget } from "./exec.js";
import { INIT_SCRIPT, launcherCommand } from "./launcher.js";
import { WarmPool, type WarmPoolOptions } from "../warm-pool.js";
import { dockerDefinition } from "./definition.js";
import { checkedWorkspaceDir } from "./workspace-path.js";
import { makeEgressDir, reapEgressDirs, startContainerBridge, stopContainerBridge } from "./egress.js";
import { EGRESS_PROXY_URL, EGRESS_SANDBOX_DIR } from "../local/egress-bridge.js";

export const LABEL_PID = "sandqueue.pid";
export const LABEL_HOST = "sandqueue.host";
export const LABEL_POOLED = "sandqueue.pooled";

export interface DockerProviderOptions {
  /** `unix:///path` or `tcp://host:port`; defaults to $DOCKER_HOST, then /var/run/docker.sock. */
  dockerHost?: string;
  apiVersion?: string;
  /** Worker id: every container carries it (label-safe) as `sandqueue.io/worker`. */
  owner: string;
  /** Extra labels on every container (pooled ones included). */
  labels?: Record<string, string>;
  /** Warm pool per (image, limits); `{minIdle: 0}` disables it. */
  pool?: WarmPoolOptions;
  /** Optional CPU cap, in units of 1e-9 CPUs (Docker's NanoCpus). */
  nanoCpus?: number;
  /** Size caps of the tmpfs mounts; both count against the memory limit too. */
  workspaceSizeMb?: number;
  tmpSizeMb?: number;
  /** Run as this user instead of the image's (or 65534 when the image sets none / root). */
  user?: string;
  /** Limits applied to archives coming in through putArchive. */
  archiveLimits?: ArchiveLimits;
  /**
   * Host directory of the per-sandbox egress directories (`network: "proxy"`,
   * engine on this host only). Default: `os.tmpdir()/sandqueue-egress`.
   */
  egressDir?: string;
}

/** Default caps for incoming archives when the caller gives none. */
const NOBODY = "65534:65534";

const CONTAINER_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];

interface ContainerTemplate {
  image: string;
  memoryMb: number;
  pids: number;
  labels: Record<string, string>;
  /** `network: "proxy"`: host directory bound read-only at EGRESS_SANDBOX_DIR. */
  egressDir?: string;
}

interface EngineFlavour {
  workspaceExtra: string;
  tmpExtra: string;
  /** Extra HostConfig.SecurityOpt entries (Podman: the tightened seccomp profile). */
  securityOpt: string[];
}

interface Container {
  id: string;
  user: string;
  /** Host paths of the container's cgroup event files, when readable here. */
  counterFiles: string[] | null;
  /** `network: "proxy"`: the way out and the bridge serving it. */
  egress?: { view: SandboxEgress; bridge: ChildProcess };
}

export class DockerProvider implements SandboxProvider {
  readonly name = "docker";
  readonly capabilities: ProviderCapabilities;
  readonly engine: EngineClient;
  private readonly opts: DockerProviderOptions;
  private readonly baseLabels: Record<string, string>;
  private readonly ownerLabel: string;
  private readonly users = new Map<string, Promise<string>>();
  private readonly live = new Set<DockerSandbox>();
  readonly pool: WarmPool<Container>;
  private closing: Promise<void> | undefined;
  private flavour: Promise<EngineFlavour> | undefined;
  /** The engine listens on a unix socket of this host (so host paths mean the same to it). */
  private readonly localEngine: boolean;
  private readonly egressRoot: string;

  constructor(opts: DockerProviderOptions) {
    this.opts = opts;
    this.engine = new EngineClient({ dockerHost: opts.dockerHost ?? process.env.DOCKER_HOST, apiVersion: opts.apiVersion });
    this.localEngine = parseDockerHost(opts.dockerHost ?? process.env.DOCKER_HOST).kind === "unix";
    // The bridge enters the container's namespace through /proc: only for an engine on this host.
    this.capabilities = { ...dockerDefinition.capabilities, networkPolicy: dockerDefinition.capabilities.networkPolicy && this.localEngine };
    this.egressRoot = path.resolve(opts.egressDir ?? path.join(os.tmpdir(), "sandqueue-egress"));
    this.ownerLabel = labelSafe(opts.owner);
    this.baseLabels = {
      ...opts.labels,
      ...ownershipLabels(opts.owner),
      [LABEL_PID]: String(process.pid),
      [LABEL_HOST]: os.hostname(),
    };
    this.pool = new WarmPool<Container>(
      opts.pool ?? { minIdle: 0, maxSize: 0 },
      (t) => this.createContainer({ ...(t as ContainerTemplate), labels: { [LABEL_POOLED]: "true" } }),
      (c) => this.removeContainer(c.id),
    );
  }

  /** The worker id (its label-safe form is in every container's `sandqueue.io/worker` label). */
  get owner(): string {
    return this.opts.owner;
  }

  /** Runs `fn`, translating whatever the engine throws (the one translation point). */
  async call<T>(ctx: EngineErrorContext, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw translateEngineError(err, { endpoint: this.engine.describe(), ...ctx });
    }
  }

  async check(): Promise<void> {
    await this.call({ op: "ping" }, async () => {
      const res = await this.engine.stream({ method: "GET", path: "/_ping" });
      await readAll(res);
    });
  }

  /** Prewarms the pool for an (image, limits) pair before any job asks. */
  prewarm(spec: Pick<SandboxSpec, "image" | "limits">): void {
    this.pool.register(poolKey(spec), templateOf(spec));
  }

  async acquire(spec: SandboxSpec, opts: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    if (this.closing) throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, "docker provider is closed", { retryable: true });
    throwIfAcquireAborted(opts.signal);
    if (spec.network === "proxy") {
      if (!this.capabilities.networkPolicy) {
        throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `network mode "proxy" needs the engine on this host (a unix:// DOCKER_HOST)`, { retryable: false });
      }
      return this.acquireWithEgress(spec, opts.signal);
    }
    if (spec.network !== "none") {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `network mode "${String(spec.network)}" is not supported`);
    }
    // Pooled containers were created before this job existed, so they carry
    // the provider's ownership labels (managed-by, worker, pid, host) but not
    // the job's: Docker labels cannot be changed after create. Reaping needs
    // only the worker label.
    const pooled = await this.pool.take(poolKey(spec), templateOf(spec), opts.signal);
    if (pooled && opts.signal?.aborted) await this.removeContainer(pooled.id).catch(() => {});
    throwIfAcquireAborted(opts.signal);
    // Docker has no annotations: the job's own labels become `sandqueue.label.<key>` labels.
    const labels = { ...spec.labels, ...prefixedAnnotations(spec.annotations) };
    const container = pooled ?? (await this.createContainer({ ...templateOf(spec), labels }, opts.signal));
    const box = new DockerSandbox(this, container, spec, this.opts.archiveLimits ?? DEFAULT_ARCHIVE_LIMITS);
    this.live.add(box);
    return box;
  }

  /**
   * A container of its own (pooled ones have no egress directory bound), and
   * the bridge into its namespace before anything of the job runs there.
   */
  private async acquireWithEgress(spec: SandboxSpec, signal?: AbortSignal): Promise<Sandbox> {
    const egressDir = makeEgressDir(this.egressRoot);
    let container: Container | undefined;
    try {
      const labels = { ...spec.labels, ...prefixedAnnotations(spec.annotations) };
      container = await this.createContainer({ ...templateOf(spec), labels, egressDir }, signal);
      const created = container;
      const info = await this.call({ op: "inspect container" }, () => this.engine.json<{ State?: { Pid?: number } }>({ method: "GET", path: `/containers/${created.id}/json` }));
      const pid = info.State?.Pid;
      if (!pid) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, "the engine reports no init pid for the container: cannot bridge it to the egress proxy", { retryable: true });
      const bridge = await startContainerBridge(pid, egressDir);
      container.egress = { view: { hostDir: egressDir, sandboxDir: EGRESS_SANDBOX_DIR, proxyUrl: EGRESS_PROXY_URL }, bridge };
      throwIfAcquireAborted(signal);
    } catch (err) {
      if (container?.egress) await stopContainerBridge(container.egress.bridge);
      if (container) await this.removeContainer(container.id).catch(() => {});
      await rm(egressDir, { recursive: true, force: true });
      throw err;
    }
    const box = new DockerSandbox(this, container, spec, this.opts.archiveLimits ?? DEFAULT_ARCHIVE_LIMITS);
    this.live.add(box);
    return box;
  }

  /** Creates and starts one container; removes it again if a later step fails. */
  private async createContainer(t: ContainerTemplate, signal?: AbortSignal): Promise<Container> {
    const [user, flavour] = await Promise.all([this.resolveUser(t.image, signal), this.engineFlavour()]);
    const body = {
      Image: t.image,
      // The launcher (launcher.ts) serves the first exec over attach, then idles as the init.
      Cmd: launcherCommand(INIT_SCRIPT),
      Entrypoint: [],
      OpenStdin: true,
      StdinOnce: true,
      AttachStdin: true,
      AttachStdout: true,
      AttachStderr: true,
      Tty: false,
      User: user,
      WorkingDir: WORKSPACE_DIR,
      Env: CONTAINER_ENV,
      StopSignal: "SIGKILL",
      StopTimeout: 1,
      Labels: { ...t.labels, ...this.baseLabels },
      NetworkDisabled: true,
      HostConfig: {
        Memory: t.memoryMb * 1024 * 1024,
        // Equal to Memory: no swap on top of the limit.
        MemorySwap: t.memoryMb * 1024 * 1024,
        PidsLimit: t.pids,
        ...(this.opts.nanoCpus ? { NanoCpus: this.opts.nanoCpus } : {}),
        NetworkMode: "none",
        ...(t.egressDir ? { Binds: [`${t.egressDir}:${EGRESS_SANDBOX_DIR}:ro`] } : {}),
        ReadonlyRootfs: true,
        Tmpfs: {
          [WORKSPACE_DIR]: `rw,nosuid,nodev,size=${this.opts.workspaceSizeMb ?? 256}m,mode=1777${flavour.workspaceExtra}`,
          "/tmp": `rw,nosuid,nodev,size=${this.opts.tmpSizeMb ?? 64}m,mode=1777${flavour.tmpExtra}`,
        },
        CapDrop: ["ALL"],
        SecurityOpt: ["no-new-privileges", ...flavour.securityOpt],
        // Nothing the sandbox should outlive: no restarts, no logs kept.
        RestartPolicy: { Name: "no" },
        LogConfig: { Type: "none" },
      },
    };
    // A name of our own: when create fails or is aborted mid-flight the
    // engine may still have made the container, and the name finds it.
    // The `sandqueue-` prefix also tells scripts/setup.d/podman.sh's conmon
    // wrapper that the container is always force-removed (cheap exit command).
    const name = `sandqueue-${randomUUID()}`;
    try {
      const created = await this.call({ op: "create container", image: t.image }, () =>
        this.engine.json<{ Id: string }>({ method: "POST", path: "/containers/create", query: { name }, body, signal }),
      );
      throwIfAcquireAborted(signal);
      await this.call({ op: "start container", image: t.image }, () =>
        this.engine.json({ method: "POST", path: `/containers/${created.Id}/start` }),
      );
      const counterFiles = await this.findCounterFiles(created.Id);
      throwIfAcquireAborted(signal);
      return { id: created.Id, user, counterFiles };
    } catch (err) {
      await this.removeContainer(name).catch(() => {});
      throw err;
    }
  }

  /**
   * When the engine runs on this host, the container's cgroup event files
   * can be read directly (microseconds, versus an exec). Found through the
   * init's /proc/<pid>/cgroup; the path must name the container id, which
   * also rules out a pid from another pid namespace.
   */
  private async findCounterFiles(id: string): Promise<string[] | null> {
    if (this.engine.endpoint.kind !== "unix") return null;
    try {
      const info = await this.engine.json<{ State?: { Pid?: number } }>({ method: "GET", path: `/containers/${id}/json` });
      const pid = info.State?.Pid;
      if (!pid) return null;
      const lines = (await readFile(`/proc/${pid}/cgroup`, "utf8")).trim().split("\n");
      const v1 = (ctrl: string): string | undefined =>
        lines.map((l) => l.split(":")).find((f) => f[1]?.split(",").includes(ctrl))?.[2];
      const memory = v1("memory");
      const pids = v1("pids");
      let files: string[];
      if (memory && pids) {
        files = [`/sys/fs/cgroup/memory${memory}/memory.oom_control`, `/sys/fs/cgroup/pids${pids}/pids.events`];
      } else {
        const unified = lines.find((l) => l.startsWith("0::"))?.slice(3);
        if (!unified) return null;
        files = [`/sys/fs/cgroup${unified}/memory.events`, `/sys/fs/cgroup${unified}/pids.events`];
      }
      if (!files.every((f) => f.includes(id))) return null;
      await Promise.all(files.map((f) => readFile(f, "utf8")));
      return files;
    } catch {
      return null;
    }
  }

  /**
   * Podman gives a tmpfs the owner and mode of the image's directory it
   * covers (ignoring mode=1777) and copies that directory's content in
   * ("tmpcopyup"). `notmpcopyup` keeps the workspace empty and `U` hands it
   * to the container's user. Docker honours mode= and rejects both options.
   * Asked once per provider.
   */
  private engineFlavour(): Promise<EngineFlavour> {
    this.flavour ??= this.call({ op: "version" }, async () => {
      const v = await this.engine.json<{ Components?: Array<{ Name: string }> }>({ method: "GET", path: "/version" });
      const podman = (v.Components ?? []).some((c) => /podman/i.test(c.Name));
      // The profile is a path on the engine's host: only usable for a local socket.
      const seccomp = podman && this.localEngine ? podmanProfilePath() : null;
      return podman
        ? { workspaceExtra: ",notmpcopyup,U", tmpExtra: ",notmpcopyup", securityOpt: seccomp ? [`seccomp=${seccomp}`] : [] }
        : { workspaceExtra: "", tmpExtra: "", securityOpt: [] };
    });
    this.flavour.catch(() => (this.flavour = undefined));
    return this.flavour;
  }

  /**
   * The image's own user when it names a non-root one; otherwise 65534
   * (nobody), which needs no /etc/passwd entry. Cached per image; a failed
   * lookup (image missing) is not cached.
   */
  private resolveUser(image: string, signal?: AbortSignal): Promise<string> {
    if (this.opts.user) return Promise.resolve(this.opts.user);
    let p = this.users.get(image);
    if (!p) {
      p = this.call({ op: "inspect image", image }, async () => {
        try {
          const info = await this.engine.json<{ Config?: { User?: string } }>({
            method: "GET",
            path: `/images/${encodeURIComponent(image)}/json`,
            signal,
          });
          const u = info.Config?.User?.trim() ?? "";
          return u === "" || u === "root" || u === "0" || u.startsWith("0:") || u.startsWith("root:") ? NOBODY : u;
        } catch (err) {
          if (err instanceof EngineHttpError && err.status === 404) throw imageNotFound(image, err);
          throw err;
        }
      });
      this.users.set(image, p);
      p.catch(() => this.users.delete(image));
    }
    return p;
  }

  /** Force-removes a container (and its anonymous volumes); a missing one is fine. */
  async removeContainer(id: string): Promise<void> {
    await this.call({ op: "remove container" }, async () => {
      try {
        await this.engine.json({ method: "DELETE", path: `/containers/${id}`, query: { force: true, v: true } });
      } catch (err) {
        if (err instanceof EngineHttpError && err.status === 404) return;
        throw err;
      }
    });
  }

  /** @internal */
  forget(box: DockerSandbox): void {
    this.live.delete(box);
  }

  /**
   * Removes sandqueue containers whose owner is dead: its worker label has no
   * heartbeat (`owners`, from the worker), or it was made on this host by a
   * process that is gone. Works across hosts sharing one engine. Never
   * touches this provider's own containers, nor a live worker's.
   */
  async reap(owners?: OwnerLiveness): Promise<number> {
    const list = await this.call({ op: "list containers" }, () =>
      this.engine.json<Array<{ Id: string; Labels: Record<string, string> | null }>>({
        method: "GET",
        path: "/containers/json",
        query: { all: true, filters: JSON.stringify({ label: [`${LABEL_MANAGED_BY}=${MANAGED_BY}`] }) },
      }),
    );
    const host = os.hostname();
    const mine = (l: Record<string, string>): boolean =>
      l[LABEL_WORKER] === this.ownerLabel && l[LABEL_PID] === String(process.pid) && l[LABEL_HOST] === host;
    const others = list.filter((c) => !mine(c.Labels ?? {}));
    const live = owners ? await owners.liveOwners([...new Set(others.map((c) => c.Labels?.[LABEL_WORKER] ?? ""))]) : null;
    let removed = 0;
    for (const c of others) {
      const l = c.Labels ?? {};
      const localDead = l[LABEL_HOST] === host && !pidAlive(Number(l[LABEL_PID]));
      const noHeartbeat = live !== null && !live.has(l[LABEL_WORKER] ?? "");
      if (!localDead && !noHeartbeat) continue;
      await this.removeContainer(c.Id);
      removed++;
    }
    if (this.localEngine) await reapEgressDirs(this.egressRoot);
    return removed;
  }

  /** Idempotent: drains the pool and removes every sandbox still handed out. */

  readySandboxes(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [key, n] of this.pool.idleByKey()) out[imageOfKey(key)] = (out[imageOfKey(key)] ?? 0) + n;
    return out;
  }
  close(): Promise<void> {
    this.closing ??= (async () => {
      const results = await Promise.allSettled([this.pool.drain(), ...[...this.live].map((b) => b.release())]);
      this.engine.close();
      const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed) throw failed.reason;
    })();
    return this.closing;
  }
}

class DockerSandbox implements Sandbox, ExecTarget {
  readonly id: string;
  readonly egress?: SandboxEgress;
  private released: Promise<void> | undefined;
  private readonly releaseController = new AbortController();
  readonly releasing: AbortSignal;
  readonly hostCounters: (() => Promise<Counters | null>) | null;
  /** Cgroup counters already attributed, so each limit event is reported once. */
  counters = { oomKills: 0, pidsMax: 0 };
  /** The container's main process still waits for its one request (the first exec). */
  private launcherFree = true;

  constructor(
    readonly provider: DockerProvider,
    readonly container: Container,
    readonly spec: SandboxSpec,
    private readonly archiveLimits: ArchiveLimits,
  ) {
    this.id = container.id;
    if (container.egress) this.egress = container.egress.view;
    this.releasing = this.releaseController.signal;
    const files = container.counterFiles;
    this.hostCounters = files
      ? async () => parseCounters((await Promise.all(files.map((f) => readFile(f, "utf8")))).join("\n"))
      : null;
  }

  get engine(): EngineClient {
    return this.provider.engine;
  }

  private ensureLive(op: string): void {
    if (this.released) {
      throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id.slice(0, 12)} was released (${op})`);
    }
  }

  async exec(req: ExecRequest): Promise<ExecResult> {
    this.ensureLive("exec");
    // The first exec goes to the waiting launcher (attach: no runc exec);
    // taken before anything can fail, since its stdin is a one-shot.
    const viaLauncher = this.launcherFree && !req.signal?.aborted;
    if (viaLauncher) this.launcherFree = false;
    return this.provider.call({ op: "exec" }, () => runExec(this, req, viaLauncher));
  }

  async putArchive(dir: string, tar: Readable, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const { signal } = opts;
    const what = `sandbox ${this.id.slice(0, 12)}: putArchive`;
    this.ensureLive("putArchive");
    await guardPut(tar, what, signal, async () => {
      // The validated stream fails with the SANDQ_ERR_TAR_* error on the first
      // bad entry; that aborts the upload and is rethrown as-is by call().
      const abs = await this.provider.call({ op: "put archive" }, () => checkedWorkspaceDir(this.engine, this.id, dir, (p) => this.mkdirp(p)));
      throwIfTransferAborted(what, signal);
      // An abort cancels the request and stops both streams. The engine
      // extracts as it reads, so part of the archive may be in the sandbox:
      // an aborted job's sandbox is released, never used again.
      const body = destroyOnAbort(validateTar(destroyOnAbort(tar, what, signal), this.archiveLimits), what, signal);
      await this.provider.call({ op: "put archive" }, () =>
        this.engine.json({
          method: "PUT",
          path: `/containers/${this.id}/archive`,
          // copyUIDGID: the engine chowns what it extracts to the container's
          // user (Docker and Podman alike), so the job can modify its files.
          query: { path: abs, copyUIDGID: true },
          body,
          headers: { "Content-Type": "application/x-tar" },
          signal,
        }),
      );
    });
  }

  async getArchive(dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
    const { signal, ...packOpts } = opts;
    const what = `sandbox ${this.id.slice(0, 12)}: getArchive`;
    this.ensureLive("getArchive");
    throwIfTransferAborted(what, signal);
    const res = await this.provider
      .call({ op: "get archive" }, async () => {
        const abs = await checkedWorkspaceDir(this.engine, this.id, dir, null);
        return this.engine.stream({ method: "GET", path: `/containers/${this.id}/archive`, query: { path: abs }, signal });
      })
      .catch(rethrowAborted(what, signal));
    // The engine names entries "<basename of dir>/..."; strip that level. An
    // abort fails both the engine's stream and ours: a store never sees an end.
    return destroyOnAbort(normalizeTar(destroyOnAbort(res, what, signal), { ...packOpts, stripComponents: 1 }), what, signal);
  }

  /** Creates a directory as the sandbox user, so the job owns it. */
  private async mkdirp(abs: string): Promise<void> {
    const r = await runExec(this, { argv: ["mkdir", "-p", "--", abs], env: {}, timeoutMs: 10_000, maxOutputBytes: 4096 });
    if (r.exitCode !== 0) {
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `cannot create ${abs} in the sandbox: ${r.stderr.toString().trim()}`);
    }
  }

  /** Sends SIGUSR1 to the init, which kills every other process in the sandbox. */
  async killProcesses(): Promise<void> {
    await this.engine.json({ method: "POST", path: `/containers/${this.id}/kill`, query: { signal: "SIGUSR1" } });
  }

  /** Last resort when the init cannot do it: kills the whole container. */
  async killContainer(): Promise<void> {
    await this.engine.json({ method: "POST", path: `/containers/${this.id}/kill`, query: { signal: "SIGKILL" } }).catch(() => {});
  }

  release(): Promise<void> {
    this.released ??= (async () => {
      this.provider.forget(this);
      // A running exec sees the abort and reports "aborted".
      this.releaseController.abort();
      const egress = this.container.egress;
      if (egress) await stopContainerBridge(egress.bridge);
      await this.provider.removeContainer(this.id);
      if (egress) await rm(egress.view.hostDir, { recursive: true, force: true });
    })();
    return this.released;
  }
}

function prefixedAnnotations(a: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(a).map(([k, v]) => [`sandqueue.label.${k}`, v]));
}

/** The image part of a pool key. */
function imageOfKey(key: string): string {
  return key.split("\u0000")[0]!;
}

function poolKey(spec: Pick<SandboxSpec, "image" | "limits">): string {
  return `${spec.image}\u0000${spec.limits.memoryMb}\u0000${spec.limits.pids}`;
}

function templateOf(spec: Pick<SandboxSpec, "image" | "limits">): ContainerTemplate {
  return { image: spec.image, memoryMb: spec.limits.memoryMb, pids: spec.limits.pids, labels: {} };
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
