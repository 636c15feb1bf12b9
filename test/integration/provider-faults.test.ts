/**
 * What the worker does with the faults remote backends raise: rate limits
 * (retried after the backend's Retry-After), refused credentials (no retry),
 * a sandbox lost mid-exec (retried from scratch). Real Redis and a real
 * worker; the provider is a scripted stand-in, since the point is the
 * worker's handling, not a backend.
 */
import { afterEach, describe, expect, it } from "vitest";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import type { ExecResult, ProviderCapabilities, Sandbox, SandboxProvider } from "../../providers/provider.js";
import { parseWorkerConfig } from "../../worker/config.js";
import { silentLogger } from "../../worker/log.js";
import { startWorkerRuntime } from "../../worker/runtime.js";
import { REDIS_URL, testClient, uniqueQueue } from "../support/harness.js";

const CAPS: ProviderCapabilities = {
  memoryLimit: true, pidsLimit: true, limitEvents: true, stdin: true, separateStderr: true,
  byteExactOutput: true, networkIsolation: true, networkPolicy: false, hostWorkspace: false,
};

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

/** A provider whose n-th acquire or exec fails as scripted; the rest succeed with "ok". */
function scripted(faults: { acquire?: (n: number) => Error | null; exec?: (n: number) => Error | null }): SandboxProvider & { calls: number[] } {
  let acquires = 0;
  let execs = 0;
  const calls: number[] = [];
  return {
    name: "scripted",
    capabilities: CAPS,
    calls,
    async check() {},
    async close() {},
    async acquire(): Promise<Sandbox> {
      calls.push(Date.now());
      const err = faults.acquire?.(++acquires);
      if (err) throw err;
      return {
        id: `s${acquires}`,
        async exec(): Promise<ExecResult> {
          const e = faults.exec?.(++execs);
          if (e) throw e;
          return { exitCode: 0, signal: null, stdout: Buffer.from("ok\n"), stderr: Buffer.alloc(0), stdoutTruncated: false, stderrTruncated: false, limitHit: null, durationMs: 1 };
        },
        async putArchive() {},
        async getArchive() {
          throw new Error("not used");
        },
        async release() {},
      };
    },
  };
}

async function run(provider: SandboxProvider) {
  const queue = uniqueQueue("faults");
  const config = parseWorkerConfig({ REDIS_URL }, {}, { queue, metricsPort: 0, logJobs: false, concurrency: 1 });
  const rt = await startWorkerRuntime(config, silentLogger, { provider });
  cleanups.push(() => rt.close(0));
  const client = testClient(queue, { backoffMs: 100 });
  cleanups.push(() => client.close());
  const { id } = await client.enqueue({ kind: "shell", script: "true" });
  return client.waitForResult(id, { timeoutMs: 30_000 });
}

describe("remote backend faults", () => {
  it("a rate-limited acquire is retried after the backend's Retry-After, not the (shorter) backoff", async () => {
    const p = scripted({
      acquire: (n) => (n === 1 ? new ProviderError(ErrorCodes.PROVIDER_RATE_LIMITED, "429 Too Many Requests", { retryable: true, retryAfterMs: 1500 }) : null),
    });
    const r = await run(p);
    expect(r).toMatchObject({ status: "succeeded", stdout: "ok\n", attempts: 2 });
    expect(p.calls[1]! - p.calls[0]!).toBeGreaterThanOrEqual(1400);
  });

  it("refused credentials end the job as error at once, without a retry", async () => {
    const p = scripted({ acquire: () => new ProviderError(ErrorCodes.PROVIDER_CREDENTIALS, "401 Unauthorized: API key refused") });
    const r = await run(p);
    expect(r).toMatchObject({ status: "error", attempts: 1, error: { code: ErrorCodes.PROVIDER_CREDENTIALS } });
    expect(p.calls).toHaveLength(1);
  });

  it("a sandbox lost mid-exec is retried in a new sandbox", async () => {
    const p = scripted({ exec: (n) => (n === 1 ? new ProviderError(ErrorCodes.SANDBOX_LOST, "pod deleted during exec", { retryable: true }) : null) });
    const r = await run(p);
    expect(r).toMatchObject({ status: "succeeded", attempts: 2 });
    expect(p.calls).toHaveLength(2);
  });
});
