/**
 * The sandbox provider contract.
 *
 * A provider knows sandboxes, not jobs or queues: it imports nothing from
 * worker/ or producer/. One contract suite (providers/contract.ts) runs
 * against every provider; a backend is done when that suite passes.
 */
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
  /** Only "none" today: no network interface but loopback. */
  network: "none";
  /** Attached to backend objects (container labels) so orphans can be reaped. */
  labels: Record<string, string>;
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

export interface Sandbox {
  readonly id: string;
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

export interface ProviderCapabilities {
  memoryLimit: boolean;
  pidsLimit: boolean;
  networkIsolation: boolean;
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
  /** Removes sandboxes left behind by dead workers; returns how many. */
  reap?(labels: Record<string, string>): Promise<number>;
  /** Sandboxes created ahead of demand and ready now, per image (pools only). */
  readySandboxes?(): Record<string, number>;
  /** Idempotent. */
  close(): Promise<void>;
}

/** Inside every sandbox the workspace is here and is the working directory. */
export const WORKSPACE_DIR = "/workspace";
