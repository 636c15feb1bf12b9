/**
 * The superserve provider (providers/superserve, on @superserve/sdk) against
 * the Superserve stand-in (standins/superserve), whose sandboxes are real
 * bubblewrap sandboxes: the provider contract suite, faults (5xx bursts,
 * 429, 401/503 answered by one activate and one retry, a sandbox failed or
 * deleted mid-job), the seed's reattach rules, warm reuse, reaping through
 * the SDK's list call. Needs root and bubblewrap; fails, never skips,
 * without them.
 */
import { mkdtemp, rm, rmdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox as SdkSandbox } from "@superserve/sdk";
import { describeProviderContract } from "../../providers/contract.js";
import { LocalProvider } from "../../providers/local/index.js";
import { ownershipLabels, type SandboxSpec } from "../../providers/provider.js";
import { SuperserveProvider, type SuperserveProviderOptions } from "../../providers/superserve/index.js";
import { SuperserveStandin } from "../../standins/superserve/index.js";
import { requireCommand } from "../support/harness.js";

let tmp: string;
let local: LocalProvider;
let standin: SuperserveStandin;
const cgroupParent = `sandqueue-superserve-prov-${process.pid}`;

beforeAll(async () => {
  requireCommand("bwrap", "bubblewrap");
  tmp = await mkdtemp(path.join(os.tmpdir(), "sandqueue-superserve-prov-"));
  local = new LocalProvider({ workRoot: path.join(tmp, "work"), cgroupParent });
  standin = await SuperserveStandin.start({ provider: local });
});

afterAll(async () => {
  await standin?.stop();
  await local?.close();
  for (const dir of local?.cgroupParentDirs ?? []) await rmdir(dir).catch(() => undefined);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function makeProvider(over: Partial<SuperserveProviderOptions> = {}): SuperserveProvider {
  return new SuperserveProvider({
    apiKey: standin.apiKey,
    baseUrl: standin.controlUrl,
    dataPlaneUrl: standin.dataUrl,
    templates: { host: "superserve/python-3.11" },
    owner: "worker-under-test",
    createTimeoutMs: 30_000,
    createRetries: 3,
    resumeTimeoutMs: 10_000,
    pauseOnRelease: false,
    warmMax: 4,
    pausedTtlSeconds: 3600,
    ...over,
  });
}

function spec(over: Partial<SandboxSpec> = {}): SandboxSpec {
  return {
    image: "host",
    limits: { memoryMb: 256, pids: 64 },
    network: "none",
    labels: ownershipLabels("worker-under-test", "job-1"),
    annotations: {},
    maxLifetimeMs: 600_000,
    ...over,
  };
}

const sh = (script: string) => ({ argv: ["/bin/sh", "-c", script], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 20_000, maxOutputBytes: 1 << 20 });

describeProviderContract("superserve (stand-in)", async () => makeProvider(), {
  image: "host",
  listResources: async () => standin.sandboxList().filter((s) => s.metadata["sandqueue.test"] === "contract").map((s) => s.id).sort(),
});
