/**
 * The sandbox provider contract.
 *
 * A provider knows sandboxes, not jobs or queues: it imports nothing from
 * worker/ or producer/. One contract suite (providers/contract.ts) runs
 * against every provider; a backend is done when that suite passes.
 */
import { createHash } from "node:crypto";
import type { Readable } from "node:stream";
import type { PackOptions } from "./archive/index.js";

export interface SandboxLimits {
  /** Hard memory limit for everything in the sandbox, MiB. */
  memoryMb: number;
  /** Maximum number of processes/threads alive at once. */
  pids: number;
}

export interface SandboxSpec {
  /** Image name; `host` on the local provider means the host's /usr, read-only. */
  image: string;
  limits: SandboxLimits;
  /**
   * "none": no network interface but loopback. "proxy": the same, plus a way
   * to the worker's egress proxy and nothing else (`Sandbox.egress`); only
   * asked of providers whose capabilities include `networkPolicy`.
   */
  network: "none" | "proxy";
  /**
   * Ownership labels (`ownershipLabels()`: managed-by, worker, job), already
   * label-safe. Put on every backend object so any worker's reaper finds it.
   */
  labels: Record<string, string>;
  /** The job's own labels, free-form: annotations where the backend has them. */
  annotations: Record<string, string>;
  /**
   * Backstop lifetime of the sandbox, ms: backends with native expiry (pod
   * activeDeadlineSeconds, hosted TTLs) set it so a sandbox outlives no
   * worker by long, even when no reaper ever runs.
   */
  maxLifetimeMs: number;
  /**
   * 1-based attempt of the job this sandbox is for, when it is for one:
   * backends that name sandboxes (remote services) derive the name from the
   * job id and attempt, so a create sent twice makes one sandbox.
   */
  attempt?: number;
  /**
   * The job's egress policy (with `network: "proxy"`), for providers whose
   * service enforces policies itself (islo's gateway profiles): such a
   * sandbox says so with `Sandbox.egressEnforced`, and the worker's proxy is
   * not used. Others ignore it.
   */
  egressPolicy?: SandboxEgressPolicy;
}

/** A job's egress policy as providers see it (the job contract's, producer/network-policy.ts, by shape). */
export interface SandboxEgressPolicy {
  default: "allow" | "deny";
  egress: readonly (string | SandboxEgressRule)[];
  /** Bound secrets (names and hosts); their values stay with the worker. */
  secrets?: readonly { name: string; hosts: readonly string[] }[];
  maxBytes?: number;
}

export interface SandboxEgressRule {
  host: string;
  action?: "allow" | "deny";
  methods?: readonly string[];
  paths?: readonly string[];
  ports?: readonly number[];
  ratePerMinute?: number;
}

/** Label keys every sandbox carries (Kubernetes-style; values made label-safe). */
export const LABEL_MANAGED_BY = "app.kubernetes.io/managed-by";
export const LABEL_WORKER = "sandqueue.io/worker";
export const LABEL_JOB = "sandqueue.io/job";
export const MANAGED_BY = "sandqueue";

/**
 * A label value as Kubernetes accepts it: at most 63 characters of
 * [A-Za-z0-9._-], starting and ending alphanumeric. Longer or unsafe values
 * keep a readable prefix and end in a hash of the original, so two distinct
 * ids never map to one value.
 */
export function labelSafe(value: string): string {
  const cleaned = value.replace(/[^A-Za-z0-9._-]/g, "-").replace(/^[^A-Za-z0-9]+/, "").replace(/[^A-Za-z0-9]+$/, "");
  if (cleaned === value && value.length <= 63 && value.length > 0) return value;
  const hash = createHash("sha256").update(value).digest("hex").slice(0, 10);
  const head = cleaned.slice(0, 52).replace(/[^A-Za-z0-9]+$/, "");
  return head ? `${head}-${hash}` : hash;
}

/** The ownership labels of a sandbox: who manages it, which worker owns it, which job (once adopted). */
export function ownershipLabels(workerId: string, jobId?: string): Record<string, string> {
  return {
    [LABEL_MANAGED_BY]: MANAGED_BY,
    [LABEL_WORKER]: labelSafe(workerId),
    ...(jobId === undefined ? {} : { [LABEL_JOB]: labelSafe(jobId) }),
  };
}

/**
 * Tells a reaper which workers are alive (their heartbeat key exists in
 * Redis). Given label-safe worker ids (as found on sandboxes), answers the
 * subset that is alive.
 */
export interface OwnerLiveness {
  liveOwners(workerLabels: readonly string[]): Promise<ReadonlySet<string>>;
}

export interface ExecRequest {
  argv: string[];
  /** The complete environment: nothing of the worker's leaks in. */
  env: Record<string, string>;
  /** Absolute path inside the sandbox; defaults to /workspace. */
  cwd?: string;
  stdin?: Buffer | string;
  /** Wall-time limit; the whole process tree is killed when it passes. */
  timeoutMs: number;
  /** Per stream; the provider stops reading past it and kills the sandbox. */
  maxOutputBytes: number;
  /** Aborting kills the process tree (cancel, worker shutdown). */
  signal?: AbortSignal;
  /**
   * Sees each chunk of output as it is kept (within maxOutputBytes), while the
   * program runs: for callers that relay output live (the Kubernetes stand-in's exec).
   */
  onOutput?: (stream: "stdout" | "stderr", chunk: Buffer) => void;
}

/** Which limit ended the execution, if any. */
export type ExecLimitHit = "timeout" | "memory" | "pids" | "output" | "aborted";

export interface ExecResult {
  exitCode: number | null;
  /** Name of the signal that ended the process, e.g. "SIGKILL". */
  signal: string | null;
  stdout: Buffer;
  stderr: Buffer;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Set when a limit (or an abort) ended or marked the run. */
  limitHit: ExecLimitHit | null;
  durationMs: number;
}

/**
 * How a sandbox acquired with `network: "proxy"` reaches the worker's
 * egress proxy. The worker's proxy listens on `<hostDir>/EGRESS_SOCKET` for
 * this sandbox alone (the socket is the job's identity) and may leave files
 * for the job's clients in `hostDir` (its CA bundle); the sandbox sees the
 * directory read-only at `sandboxDir`, and the provider bridges `proxyUrl`
 * inside the sandbox to the socket.
 */
export interface SandboxEgress {
  readonly hostDir: string;
  readonly sandboxDir: string;
  /** The proxy as the job's clients reach it (what HTTP_PROXY says), e.g. http://127.0.0.1:3128. */
  readonly proxyUrl: string;
}

/** The unix socket the worker's proxy listens on in `SandboxEgress.hostDir`. */
export const EGRESS_SOCKET = "proxy.sock";

export interface Sandbox {
  readonly id: string;
  /** Present when acquired with `network: "proxy"`. */
  readonly egress?: SandboxEgress;
  /** The service itself enforces `SandboxSpec.egressPolicy` for this sandbox (no worker proxy needed). */
  readonly egressEnforced?: boolean;
  exec(req: ExecRequest): Promise<ExecResult>;
  /**
   * Extracts a (validated) tar stream into `dir` inside the sandbox. Aborting
   * `signal` stops the transfer promptly, destroys `tar` and rejects.
   */
  putArchive(dir: string, tar: Readable, opts?: { signal?: AbortSignal }): Promise<void>;
  /**
   * Streams `dir` inside the sandbox out as a normalised tar (regular files,
   * dirs and symlinks only; excludes and limits applied; a limit breach makes
   * the stream fail with WORKSPACE_LIMIT). Aborting `signal` fails the
   * stream (or the call) promptly, so a consumer never sees it end cleanly.
   */
  getArchive(dir: string, opts?: PackOptions & { signal?: AbortSignal }): Promise<Readable>;
  /** Kills everything and removes every trace. Idempotent. */
  release(): Promise<void>;
}

/**
 * What a provider enforces and reports. The worker refuses a job that
 * explicitly asks for something its provider cannot do
 * (SANDQ_ERR_CAPABILITY_UNSUPPORTED) and applies its default limits only
 * where they are enforced; the contract suite branches on these.
 */
export interface ProviderCapabilities {
  /** `limits.memoryMb` is a hard limit on everything in the sandbox. */
  memoryLimit: boolean;
  /** `limits.pids` caps the processes and threads alive at once. */
  pidsLimit: boolean;
  /** A memory or pids limit hit is reported as such (killed/memory, killed/pids), not as a plain failure. */
  limitEvents: boolean;
  /** `ExecRequest.stdin` reaches the program, with end-of-file after it. */
  stdin: boolean;
  /** stdout and stderr arrive apart. */
  separateStderr: boolean;
  /** Output bytes arrive unchanged (no re-encoding of invalid UTF-8, no newline translation). */
  byteExactOutput: boolean;
  /** `network: "none"`: no route out of the sandbox. */
  networkIsolation: boolean;
  /** Per-job egress policies (allowlists) can be enforced. */
  networkPolicy: boolean;
  /** True when the sandbox's /workspace is a host directory the worker can read directly. */
  hostWorkspace: boolean;
}

export interface SandboxProvider {
  readonly name: string;
  readonly capabilities: ProviderCapabilities;
  /**
   * Creates a fresh sandbox. A failure half-way releases what was created.
   * Throws ProviderError: IMAGE_NOT_FOUND (not retryable), PROVIDER_UNAVAILABLE
   * (retryable), PROVIDER_FAILED.
   */
  acquire(spec: SandboxSpec, opts: { signal?: AbortSignal }): Promise<Sandbox>;
  /** Cheap check that the backend is usable (readiness). */
  check(): Promise<void>;
  /**
   * Removes sandboxes left behind by dead workers; returns how many. A
   * sandbox is reaped only when its owner is known dead: its worker label has
   * no heartbeat (`owners`), or, for backends on this host, its owner process
   * is gone. The provider's own sandboxes are never touched.
   */
  reap?(owners?: OwnerLiveness): Promise<number>;
  /** Sandboxes created ahead of demand and ready now, per image (pools only). */
  readySandboxes?(): Record<string, number>;
  /** Idempotent. */
  close(): Promise<void>;
}

/** Inside every sandbox the workspace is here and is the working directory. */
export const WORKSPACE_DIR = "/workspace";
