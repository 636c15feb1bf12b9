/**
 * Shared test harness: unique queues, real workers on the local provider,
 * real Redis, and a check that the system packages the suites need exist
 * (a missing package fails the suite with its name; it never skips).
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SandqueueClient, type ClientOptions } from "../../producer/client.js";
import { dropQueue } from "../../producer/drop-queue.js";
import { DEFAULT_PREFIX } from "../../producer/redis.js";
import { parseWorkerConfig, type WorkerConfig } from "../../worker/config.js";
import { silentLogger } from "../../worker/log.js";
import { startWorkerRuntime, type WorkerRuntime } from "../../worker/runtime.js";
import type { ExecRequest } from "../../providers/provider.js";

export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

/** Fails (not skips) with the Debian package to install when a command is missing. */
export function requireCommand(command: string, debianPackage: string): void {
  try {
    execFileSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" });
  } catch {
    throw new Error(`${command} not found: install the Debian package '${debianPackage}' (npm run setup does)`);
  }
}

/**
 * Unmounts the tmpfs a worker put over its work root (a worker killed with
 * -9 cannot), so test runs do not leave mounts behind. Best effort.
 */
export function unmountWorkRoot(dir: string): void {
  try {
    execFileSync("umount", ["-l", dir], { stdio: "ignore" });
  } catch {
    // not mounted
  }
}

/** Queues this test file made: test/support/drop-queues.ts removes them after the file. */
const madeQueues = new Set<string>();

export function uniqueQueue(tag = "t"): string {
  const name = `test-${tag}-${randomBytes(5).toString("hex")}`;
  madeQueues.add(name);
  return name;
}

/** Removes every key of the queues this file made (jobs, results, events). */
export async function dropTestQueues(): Promise<void> {
  for (const name of madeQueues) await dropQueue(REDIS_URL, name, DEFAULT_PREFIX);
  madeQueues.clear();
}

export function tempDir(tag: string): string {
  return mkdtempSync(join(tmpdir(), `sandq-${tag}-`));
}

export async function startTestWorker(queue: string, overrides: Partial<WorkerConfig> = {}): Promise<WorkerRuntime> {
  const config = parseWorkerConfig({ REDIS_URL }, {}, {
    queue,
    metricsPort: 0,
    logJobs: false,
    concurrency: 2,
    providerSettings: { workRoot: tempDir("work") },
    stalledIntervalMs: 2000,
    lockDurationMs: 10_000,
    ...overrides,
  });
  return startWorkerRuntime(config, silentLogger);
}

export function testClient(queue: string, opts: ClientOptions = {}): SandqueueClient {
  return new SandqueueClient({ redisUrl: REDIS_URL, queue, backoffMs: 100, ...opts });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

/** A throwaway redis-server on its own port (for policy and restart tests). */
export async function startRedis(extraArgs: string[] = []): Promise<{ url: string; port: number; proc: ChildProcess; stop(): Promise<void> }> {
  requireCommand("redis-server", "redis-server");
  const port = await freePort();
  const dir = tempDir("redis");
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", ...extraArgs], {
    stdio: "ignore",
  });
  const url = `redis://127.0.0.1:${port}`;
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      execFileSync("redis-cli", ["-p", String(port), "ping"], { stdio: "ignore" });
      break;
    } catch {
      if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not start`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    url,
    port,
    proc,
    stop: () =>
      new Promise<void>((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        proc.once("exit", () => resolve());
        proc.kill("SIGKILL");
      }),
  };
}

/** An exec request running `script` under /bin/sh with a plain PATH (provider tests). */
export function shellRequest(script: string, over: Partial<ExecRequest> = {}): ExecRequest {
  return { argv: ["/bin/sh", "-c", script], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 15_000, maxOutputBytes: 1 << 20, ...over };
}
