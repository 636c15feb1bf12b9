/**
 * The job pipeline, for one attempt of one job:
 *
 *   resolve secrets -> acquire sandbox -> hydrate workspace -> exec under
 *   limits -> collect output (capped, masked) -> persist snapshot ->
 *   release sandbox (always) -> JobResult
 *
 * User code that fails, times out or hits a limit yields a result. Runner
 * faults throw a SandqueueError; the caller (worker.ts) decides between a
 * retry and an `error` result from `retryable` alone.
 *
 * Cancel and shutdown are decided by the job's own signal, never by what a
 * phase reports: whenever the signal has fired when a phase (secrets,
 * acquire, hydrate, exec, persist) fails or returns, a cancel ends the job
 * `killed`/`cancelled` and a shutdown throws ShutdownInterrupt, whatever
 * the phase threw (providers report an abort as a retryable failure).
 */
import type { Readable } from "node:stream";
import { ErrorCodes, SandqueueError } from "../errors/index.js";
import { commandFor, type JobSpec, type ResolvedLimits } from "../producer/job-spec.js";
import { isNetworkPolicy } from "../producer/network-policy.js";
import { NO_OUTPUT, errorJobResult, type JobResult, type KillReason, type SnapshotRef, type Timings } from "../producer/job-result.js";
import { WORKSPACE_DIR, ownershipLabels, type ExecResult, type Sandbox, type SandboxProvider } from "../providers/provider.js";
import type { ArchiveLimits } from "../providers/archive/index.js";
import type { EgressJobSession, EgressOpenRequest } from "./egress/gateway.js";

/** Resolves secret names to values; values never leave the worker process. */
export interface SecretResolver {
  resolve(names: readonly string[]): Promise<Record<string, string>>;
}

/** Workspace persistence: how the pipeline reaches the snapshot store. */
export interface WorkspaceStore {
  /** Streams a stored snapshot (throws SNAPSHOT_NOT_FOUND). */
  open(id: string): Promise<Readable>;
  /**
   * Stores a workspace tar, hashing while streaming; with `secrets`, refuses
   * one that holds a value (SECRET_IN_WORKSPACE). Once `signal` has fired
   * nothing is stored.
   */
  save(tar: Readable, opts?: { secrets?: Record<string, string>; signal?: AbortSignal }): Promise<SnapshotRef>;
}

/**
 * The worker's egress proxy, opened per job on the sandbox's way out
 * (worker/egress/gateway.ts). Bound secrets go to the proxy, never the sandbox.
 */
export interface EgressOpener {
  open(req: EgressOpenRequest): Promise<EgressJobSession>;
}

/** How to put inline `files` into a sandbox workspace (a tar, validated like any other). */
export type FilesToTar = (files: JobSpec["files"]) => Readable;

/** Redacts secret values from captured output. */
export type OutputMasker = (out: Buffer, values: string[], opts: { truncated: boolean }) => Buffer;

/** Why a job's abort signal fired. */
export type AbortReason = "cancelled" | "shutdown";

/** Thrown when the worker is shutting down mid-job: the job goes back to the queue. */
export class ShutdownInterrupt extends Error {
  constructor() {
    super("worker shutting down; job returned to the queue");
  }
}

export interface RunContext {
  jobId: string;
  /** 1-based attempt number. */
  attempt: number;
  /** When the job was enqueued (epoch ms). */
  enqueuedAt: number;
  workerId: string;
  provider: SandboxProvider;
  limits: ResolvedLimits;
  workspaceLimits: ArchiveLimits;
  /** Fires on cancel or shutdown; `signal.reason` is an AbortReason. */
  signal: AbortSignal;
  secrets?: SecretResolver;
  workspace?: WorkspaceStore;
  filesToTar?: FilesToTar;
  mask?: OutputMasker;
  /** Needed by jobs with a network policy. */
  egress?: EgressOpener;
  /**
   * When given, the sandbox's release is handed over instead of awaited: the
   * job's processes are already dead when exec returns, so the result is
   * published while the remains (container, cgroups, workspace) are removed.
   * The owner awaits every handed-over release before closing the provider.
   */
  releaseInBackground?: (released: Promise<void>) => void;
  /**
   * A release that could not remove everything (the job's result stands; the
   * provider's reap retries the remains). Without it the failure is dropped.
   */
  onReleaseFailed?: (err: unknown) => void;
  /** Observes phase durations as they complete (metrics). */
  onPhase?: (phase: string, ms: number) => void;
}

export async function runJob(spec: JobSpec, ctx: RunContext): Promise<JobResult> {
  const startedAt = Date.now();
  const timings: Timings = { queuedMs: Math.max(0, startedAt - ctx.enqueuedAt), acquireMs: 0, execMs: 0, totalMs: 0 };
  ctx.onPhase?.("queued", timings.queuedMs);
  const timed = async <T>(phase: "acquireMs" | "hydrateMs" | "execMs" | "snapshotMs", fn: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      const ms = Math.round((performance.now() - t0) * 1000) / 1000;
      timings[phase] = ms;
      ctx.onPhase?.(phase.replace(/Ms$/, ""), ms);
    }
  };
  // Every value, bound ones included: masked in output, refused in snapshots.
  let secretValues: Record<string, string> = {};
  const policy = isNetworkPolicy(spec.network) ? spec.network : null;
  const boundNames = policy?.secrets.map((b) => b.name) ?? [];
  let egress: EgressJobSession | undefined;
  let exec: ExecResult | undefined;
  let sandbox: Sandbox | undefined;
  /** The job's end once its signal has fired; a cancel keeps the output of an exec that ran. */
  const interrupted = (): JobResult => {
    if (ctx.signal.reason === "shutdown") throw new ShutdownInterrupt();
    return finish(exec ? resultFromExec(exec, Object.values(secretValues), "cancelled") : cancelledResult());
  };
  try {
    if (ctx.signal.aborted) return interrupted();
    if (spec.secrets.length || boundNames.length) secretValues = await resolveSecrets([...spec.secrets, ...boundNames], ctx);
    if (ctx.signal.aborted) return interrupted();

    sandbox = await timed("acquireMs", () =>
      ctx.provider.acquire(
        {
          image: spec.image,
          limits: { memoryMb: ctx.limits.memoryMb, pids: ctx.limits.pids },
          network: isNetworkPolicy(spec.network) ? "proxy" : "none",
          labels: ownershipLabels(ctx.workerId, ctx.jobId),
          annotations: spec.labels,
          maxLifetimeMs: ctx.limits.timeoutMs + LIFETIME_SLACK_MS,
          attempt: ctx.attempt,
          ...(policy ? { egressPolicy: policy } : {}),
        },
        { signal: ctx.signal },
      ),
    );
    const box = sandbox;
    if (ctx.signal.aborted) return interrupted();

    const hasFiles = Object.keys(spec.files).length > 0;
    if (spec.workspace?.from || hasFiles) {
      await timed("hydrateMs", async () => {
        if (spec.workspace?.from) {
          if (!ctx.workspace) throw new SandqueueError(ErrorCodes.SNAPSHOT_STORE, "this worker has no snapshot store configured");
          await box.putArchive(WORKSPACE_DIR, await ctx.workspace.open(spec.workspace.from), { signal: ctx.signal });
        }
        if (hasFiles) {
          if (!ctx.filesToTar) throw new SandqueueError(ErrorCodes.INTERNAL, "inline files are not supported by this worker");
          await box.putArchive(WORKSPACE_DIR, ctx.filesToTar(spec.files), { signal: ctx.signal });
        }
      });
    }
    if (ctx.signal.aborted) return interrupted();

    // A sandbox whose service enforces the policy itself (islo's gateway) needs no proxy of ours.
    if (policy && !box.egressEnforced) {
      if (!ctx.egress || !box.egress) {
        throw new SandqueueError(ErrorCodes.CAPABILITY_UNSUPPORTED, "network: this worker has no egress proxy, or its sandbox no way to it");
      }
      egress = await ctx.egress.open({ jobId: ctx.jobId, policy, boundSecrets: pick(secretValues, boundNames), sandbox: box.egress });
    }
    // Only when some secrets are bound to hosts does the environment get fewer than were resolved.
    const envSecrets = boundNames.length ? pick(secretValues, spec.secrets) : secretValues;
    exec = await timed("execMs", () =>
      box.exec({
        argv: commandFor(spec),
        // The proxy variables after the job's own, so every client goes through the proxy; bound secrets nowhere.
        env: { ...baseEnv(), ...egress?.caEnv, ...spec.env, ...egress?.proxyEnv, ...envSecrets },
        cwd: WORKSPACE_DIR,
        timeoutMs: ctx.limits.timeoutMs,
        maxOutputBytes: ctx.limits.maxOutputBytes,
        signal: ctx.signal,
      }),
    );
    if (ctx.signal.aborted) return interrupted();

    let snapshot: SnapshotRef | null = null;
    if (spec.workspace?.persist && exec.limitHit !== "aborted") {
      if (!ctx.workspace) throw new SandqueueError(ErrorCodes.SNAPSHOT_STORE, "this worker has no snapshot store configured");
      const store = ctx.workspace;
      try {
        snapshot = await timed("snapshotMs", async () => {
          const tar = await box.getArchive(WORKSPACE_DIR, { ...ctx.workspaceLimits, exclude: spec.workspace?.exclude ?? [], signal: ctx.signal });
          return store.save(tar, { secrets: secretValues, signal: ctx.signal });
        });
      } catch (err) {
        if (ctx.signal.aborted) return interrupted();
        if (err instanceof SandqueueError && err.code === ErrorCodes.WORKSPACE_LIMIT) {
          return finish(resultFromExec(exec, Object.values(secretValues), "workspace_limit"));
        }
        if (err instanceof SandqueueError && err.code === ErrorCodes.SECRET_IN_WORKSPACE) {
          // The job ran; its output stays in the result, but nothing was persisted.
          const ran = resultFromExec(exec, Object.values(secretValues), null);
          return finish({ ...ran, status: "error", reason: null, error: { code: err.code, message: err.message } });
        }
        throw err;
      }
      // A snapshot stored as the cancel arrived is not the job's: the result names none.
      if (ctx.signal.aborted) return interrupted();
    }
    return finish(resultFromExec(exec, Object.values(secretValues), null), snapshot);
  } catch (err) {
    if (ctx.signal.aborted && !(err instanceof ShutdownInterrupt)) return interrupted();
    throw err;
  } finally {
    // Before the release: the job's connections end with its sandbox.
    await egress?.close().catch((err: unknown) => ctx.onReleaseFailed?.(err));
    if (sandbox) {
      const released = sandbox.release().catch((err: unknown) => ctx.onReleaseFailed?.(err));
      if (ctx.releaseInBackground) ctx.releaseInBackground(released);
      else await released;
    }
  }

  function finish(partial: Omit<JobResult, "id" | "timings" | "provider" | "image" | "worker" | "attempts" | "snapshot">, snapshot: SnapshotRef | null = null): JobResult {
    timings.totalMs = Math.max(0, Date.now() - ctx.enqueuedAt);
    return {
      id: ctx.jobId,
      ...partial,
      timings,
      provider: ctx.provider.name,
      image: spec.image,
      worker: ctx.workerId,
      attempts: ctx.attempt,
      snapshot,
    };
  }

  function resultFromExec(exec: ExecResult, secrets: string[], forced: KillReason | null) {
    const mask = (b: Buffer, truncated: boolean): string =>
      (secrets.length && ctx.mask ? ctx.mask(b, secrets, { truncated }) : b).toString("utf8");
    const { status, reason } = forced ? { status: "killed" as const, reason: forced } : statusOf(exec);
    return {
      status,
      reason,
      exitCode: exec.exitCode,
      signal: exec.signal,
      stdout: mask(exec.stdout, exec.stdoutTruncated),
      stderr: mask(exec.stderr, exec.stderrTruncated),
      stdoutTruncated: exec.stdoutTruncated,
      stderrTruncated: exec.stderrTruncated,
      error: null,
    };
  }

  function cancelledResult() {
    return { status: "killed" as const, reason: "cancelled" as const, ...NO_OUTPUT, error: null };
  }
}

/** Maps what ended the process to the result's status and reason. */
export function statusOf(exec: ExecResult): { status: JobResult["status"]; reason: KillReason | null } {
  switch (exec.limitHit) {
    case "timeout":
      return { status: "timed_out", reason: null };
    case "aborted":
      return { status: "killed", reason: "cancelled" };
    case "memory":
    case "pids":
    case "output":
      return { status: "killed", reason: exec.limitHit };
    case null:
      return { status: exec.exitCode === 0 ? "succeeded" : "failed", reason: null };
  }
}

/** An `error` result: the runner could not run the job. */
export function errorResult(
  spec: JobSpec,
  err: SandqueueError,
  ctx: { jobId: string; attempt: number; enqueuedAt: number; workerId: string; provider: string },
): JobResult {
  return errorJobResult({
    id: ctx.jobId,
    image: spec.image,
    provider: ctx.provider,
    worker: ctx.workerId,
    attempts: ctx.attempt,
    totalMs: Math.max(0, Date.now() - ctx.enqueuedAt),
    error: { code: err.code, message: err.message },
  });
}

async function resolveSecrets(names: readonly string[], ctx: RunContext): Promise<Record<string, string>> {
  if (!ctx.secrets) {
    throw new SandqueueError(ErrorCodes.SECRET_NOT_FOUND, `secret ${names[0]} requested but this worker has no secret store`);
  }
  return ctx.secrets.resolve(names);
}

function pick(values: Record<string, string>, names: readonly string[]): Record<string, string> {
  return Object.fromEntries(names.filter((n) => Object.hasOwn(values, n)).map((n) => [n, values[n]!]));
}

/** The minimal environment every job starts from; the worker's own never leaks in. */
function baseEnv(): Record<string, string> {
  return {
    PATH: "/usr/local/bin:/usr/bin:/bin",
    HOME: WORKSPACE_DIR,
    LANG: "C.UTF-8",
    PYTHONDONTWRITEBYTECODE: "1",
  };
}

/**
 * A sandbox's backstop lifetime is the job's wall time plus this: room for
 * acquire, hydrate and persist, after which a backend with native expiry
 * removes the sandbox even if its worker never comes back.
 */
const LIFETIME_SLACK_MS = 15 * 60_000;
