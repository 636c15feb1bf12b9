/**
 * Cancel and shutdown in every phase of the pipeline (worker/run-job.ts),
 * with a fake provider that is slow in one phase. The job's own signal
 * decides the outcome, whatever the slow phase does about it: honour the
 * abort, ignore it and then fail the way the real providers do (a retryable
 * PROVIDER_FAILED), or ignore it and finish normally.
 */
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import { ErrorCodes, ProviderError, toSandqueueError } from "../../errors/index.js";
import type { SnapshotRef } from "../../producer/job-result.js";
import { parseJobSpec, type JobSpec } from "../../producer/job-spec.js";
import { filesToTar, type PackOptions } from "../../providers/archive/index.js";
import type { ExecRequest, ExecResult, ProviderCapabilities, Sandbox, SandboxProvider, SandboxSpec } from "../../providers/provider.js";
import { ShutdownInterrupt, runJob, type AbortReason, type RunContext, type WorkspaceStore } from "../../worker/run-job.js";
import { FileSnapshotStore, workspaceStoreFor } from "../../worker/snapshot/index.js";

type Phase = "secrets" | "acquire" | "hydrate" | "exec" | "persist-archive" | "persist-save";
/** What the slow phase does once the job's signal fires. */
type Behaviour = "honours" | "ignores-then-fails" | "ignores-then-returns";

/** How long a phase that ignores the abort keeps going after it. */
const IGNORE_MS = 30;

const retryableFailure = (what: string): ProviderError =>
  new ProviderError(ErrorCodes.PROVIDER_FAILED, `${what} aborted`, { retryable: true });

const EXEC_OK: ExecResult = {
  exitCode: 0, signal: null, stdout: Buffer.from("hi\n"), stderr: Buffer.alloc(0),
  stdoutTruncated: false, stderrTruncated: false, limitHit: null, durationMs: 1,
};

function whenAborted(signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return new Promise(() => {}); // a phase without a signal would wait forever
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function drain(stream: Readable): Promise<void> {
  for await (const _ of stream) void _;
}

async function bytesOf(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** A provider and store that are slow in one phase and record what ran. */
class Scenario implements SandboxProvider {
  readonly name = "fake";
  // runJob reads no capability.
  readonly capabilities = { memoryLimit: true, pidsLimit: true, networkIsolation: true, hostWorkspace: false } as ProviderCapabilities;
  readonly sandboxes: FakeSandbox[] = [];
  readonly saved: SnapshotRef[] = [];
  /** Resolves when the slow phase has started: the test aborts then. */
  readonly entered: Promise<void>;
  private enter!: () => void;
  /** A slow phase that ignores the abort keeps going until this is called. */
  proceed!: () => void;
  private readonly proceeded: Promise<void>;
  makeSandbox = (id: string): FakeSandbox => new FakeSandbox(this, id);

  constructor(
    readonly phase: Phase | "none",
    readonly behaviour: Behaviour,
  ) {
    this.entered = new Promise((r) => (this.enter = r));
    this.proceeded = new Promise((r) => (this.proceed = r));
  }

  /** The slow phase: waits (for the abort, or for `proceed`), then does what `behaviour` says. */
  async slow<T>(phase: Phase, signal: AbortSignal | undefined, honour: () => T | Promise<T>, ok: () => T | Promise<T>): Promise<T> {
    if (phase !== this.phase) return ok();
    this.enter();
    if (this.behaviour === "honours") {
      await whenAborted(signal);
      return honour();
    }
    await this.proceeded;
    await sleep(IGNORE_MS);
    if (this.behaviour === "ignores-then-fails") throw retryableFailure(phase);
    return ok();
  }

  acquire(_spec: SandboxSpec, opts: { signal?: AbortSignal }): Promise<Sandbox> {
    const create = (): Sandbox => {
      const s = this.makeSandbox(`sb-${this.sandboxes.length}`);
      this.sandboxes.push(s);
      return s;
    };
    // Both real providers answer an abort in acquire this way today.
    return this.slow("acquire", opts.signal, () => Promise.reject(retryableFailure("acquire")), create);
  }

  async check(): Promise<void> {}
  async close(): Promise<void> {}

  get unreleased(): string[] {
    return this.sandboxes.filter((s) => s.releases === 0).map((s) => s.id);
  }

  readonly secrets = {
    resolve: (names: readonly string[]): Promise<Record<string, string>> =>
      // No signal reaches a secret store: it can only ignore the abort.
      this.slow("secrets", undefined, () => ({}), () => Object.fromEntries(names.map((n) => [n, "s3cr3t-value"]))),
  };

  readonly workspace: WorkspaceStore = {
    open: async () => Readable.from([Buffer.alloc(1024)]),
    save: (tar, opts) =>
      this.slow(
        "persist-save",
        opts?.signal,
        async () => {
          tar.destroy();
          throw new DOMException("snapshot write aborted", "AbortError");
        },
        async () => {
          await drain(tar);
          // As WorkspaceStore.save promises, unless it is the slow phase ignoring the abort.
          if (opts?.signal?.aborted && this.phase !== "persist-save") throw new DOMException("snapshot write aborted", "AbortError");
          const ref = { id: `sha256:${"0".repeat(64)}`, bytes: 1024, files: 1 };
          this.saved.push(ref);
          return ref;
        },
      ),
  };
}

class FakeSandbox implements Sandbox {
  releases = 0;
  execs = 0;
  archivesOut = 0;

  constructor(
    private readonly scenario: Scenario,
    readonly id: string,
  ) {}

  exec(req: ExecRequest): Promise<ExecResult> {
    this.execs++;
    return this.scenario.slow(
      "exec",
      req.signal,
      () => ({ ...EXEC_OK, exitCode: null, signal: "SIGKILL", stdout: Buffer.from("partial\n"), limitHit: "aborted" as const }),
      () => EXEC_OK,
    );
  }

  putArchive(_dir: string, tar: Readable, opts?: { signal?: AbortSignal }): Promise<void> {
    return this.scenario.slow(
      "hydrate",
      opts?.signal,
      () => {
        tar.destroy();
        throw retryableFailure("putArchive");
      },
      () => drain(tar),
    );
  }

  async getArchive(_dir: string, opts?: PackOptions & { signal?: AbortSignal }): Promise<Readable> {
    this.archivesOut++;
    if (this.scenario.phase !== "persist-archive") return Readable.from([Buffer.alloc(1024)]);
    // Slow while streaming: the first bytes, the rest once the phase goes on.
    const out = new Readable({ read() {} });
    out.push(Buffer.alloc(512));
    this.scenario
      .slow(
        "persist-archive",
        opts?.signal,
        () => void out.destroy(retryableFailure("getArchive")),
        () => {
          out.push(Buffer.alloc(512));
          out.push(null);
        },
      )
      .catch((err: unknown) => out.destroy(err as Error));
    return out;
  }

  async release(): Promise<void> {
    this.releases++;
  }
}

const BASE = { kind: "shell", script: "echo hi" } as const;
const SPECS: Record<Phase, JobSpec> = {
  secrets: parseJobSpec({ ...BASE, secrets: ["TOKEN"] }),
  acquire: parseJobSpec(BASE),
  hydrate: parseJobSpec({ ...BASE, files: { "in.txt": "input\n" } }),
  exec: parseJobSpec(BASE),
  "persist-archive": parseJobSpec({ ...BASE, workspace: { persist: true } }),
  "persist-save": parseJobSpec({ ...BASE, workspace: { persist: true } }),
};

function context(s: Scenario, signal: AbortSignal): RunContext {
  return {
    jobId: "job-1",
    attempt: 1,
    enqueuedAt: Date.now(),
    workerId: "w:1",
    provider: s,
    limits: { timeoutMs: 10_000, memoryMb: 256, pids: 64, maxOutputBytes: 1 << 20 },
    workspaceLimits: { maxBytes: 1 << 30, maxEntries: 100_000, maxDepth: 64 },
    signal,
    secrets: s.secrets,
    workspace: s.workspace,
    filesToTar,
  };
}

/** Runs the job and fires the signal once the slow phase has started. */
function runAborted(phase: Phase, behaviour: Behaviour, reason: AbortReason) {
  const s = new Scenario(phase, behaviour);
  const controller = new AbortController();
  const run = runJob(SPECS[phase], context(s, controller.signal));
  run.catch(() => {}); // asserted by the caller
  void s.entered.then(() => {
    controller.abort(reason);
    s.proceed();
  });
  return { s, run };
}

const PHASES: Phase[] = ["secrets", "acquire", "hydrate", "exec", "persist-archive", "persist-save"];
const BEHAVIOURS: Behaviour[] = ["honours", "ignores-then-fails", "ignores-then-returns"];
// A secret store gets no signal: it can only ignore the abort.
const CASES = PHASES.flatMap((phase) => BEHAVIOURS.filter((b) => phase !== "secrets" || b !== "honours").map((b) => [phase, b] as const));

/** What must not have happened after the abort in `phase`. */
function expectNothingRanAfter(s: Scenario, phase: Phase): void {
  const sandboxes = s.sandboxes;
  if (phase === "secrets") expect(sandboxes).toEqual([]);
  if (phase === "acquire" || phase === "hydrate") expect(sandboxes.map((b) => b.execs)).not.toContain(1);
  if (phase === "exec") expect(sandboxes.map((b) => b.archivesOut)).toEqual([0]);
  if (phase !== "persist-save") expect(s.saved).toEqual([]);
}

describe("runJob: the job's signal decides, in every phase", () => {
  it.each(CASES)("cancel during %s (provider %s): killed/cancelled, no retry, sandbox released", async (phase, behaviour) => {
    const { s, run } = runAborted(phase, behaviour, "cancelled");
    const result = await run;
    expect(result).toMatchObject({ status: "killed", reason: "cancelled", error: null, snapshot: null, attempts: 1 });
    expect(s.unreleased).toEqual([]);
    if (phase !== "secrets" && !(phase === "acquire" && behaviour !== "ignores-then-returns")) expect(s.sandboxes).toHaveLength(1);
    expectNothingRanAfter(s, phase);
  });

  it.each(CASES)("shutdown during %s (provider %s): ShutdownInterrupt, sandbox released", async (phase, behaviour) => {
    const { s, run } = runAborted(phase, behaviour, "shutdown");
    await expect(run).rejects.toBeInstanceOf(ShutdownInterrupt);
    expect(s.unreleased).toEqual([]);
    expectNothingRanAfter(s, phase);
  });

  it("a cancel during exec keeps the output the job wrote before it", async () => {
    const { run } = runAborted("exec", "honours", "cancelled");
    expect(await run).toMatchObject({ status: "killed", reason: "cancelled", stdout: "partial\n", exitCode: null, signal: "SIGKILL" });
  });

  // Without an abort the same failures are ordinary retryable faults: what the
  // tests above classify is not lost in some general catch.
  it.each(PHASES)("without an abort, the same retryable failure in %s is thrown as it is", async (phase) => {
    const s = new Scenario(phase, "ignores-then-fails");
    void s.entered.then(() => s.proceed());
    const err = await runJob(SPECS[phase], context(s, new AbortController().signal)).then(
      () => null,
      (e: unknown) => e,
    );
    expect(toSandqueueError(err)).toMatchObject({ code: ErrorCodes.PROVIDER_FAILED, retryable: true, message: `${phase} aborted` });
    expect(s.unreleased).toEqual([]);
  });
});

describe("runJob: a cancel while the snapshot is written stores nothing (file store)", () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("the store gets the signal: nothing under any id, no temp file left, killed/cancelled", async () => {
    dir = await mkdtemp(join(tmpdir(), "sq-abort-store-"));
    const store = new FileSnapshotStore(dir, { fsync: false });
    const tar = await bytesOf(filesToTar({ "a.txt": "a".repeat(100_000), "b.txt": "b\n" }));
    const controller = new AbortController();
    let streaming!: () => void;
    const started = new Promise<void>((r) => (streaming = r));
    const s = new Scenario("none", "honours");
    // The workspace streams out half, then (once cancelled) the rest and its
    // end, as a sandbox that ignores the signal would: only the store can refuse it.
    s.makeSandbox = (id) =>
      Object.assign(new FakeSandbox(s, id), {
        getArchive: async () => {
          const out = new Readable({ read() {} });
          out.push(tar.subarray(0, tar.length / 2));
          streaming();
          controller.signal.addEventListener("abort", () => {
            out.push(tar.subarray(tar.length / 2));
            out.push(null);
          });
          return out;
        },
      });
    const run = runJob(SPECS["persist-save"], { ...context(s, controller.signal), workspace: workspaceStoreFor(store) });
    await started;
    controller.abort("cancelled");
    expect(await run).toMatchObject({ status: "killed", reason: "cancelled", snapshot: null });
    expect(await store.list()).toEqual([]);
    expect(await readdir(join(dir, "tmp"))).toEqual([]);
    expect(s.unreleased).toEqual([]);
    expect(s.sandboxes).toHaveLength(1);
    await store.close();
  });
});
