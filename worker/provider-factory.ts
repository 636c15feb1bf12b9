/** Builds the configured sandbox provider through the registry (backends load only when chosen). */
import type { SandboxProvider } from "../providers/provider.js";
import { createProvider as createRegistered } from "../providers/registry.js";
import { stateDir, type WorkerConfig } from "./config.js";

export async function createProvider(config: WorkerConfig): Promise<SandboxProvider> {
  return createRegistered(config.provider, { ...config.providerSettings }, {
    workerId: config.workerId,
    stateDir: stateDir(),
    concurrency: config.concurrency,
  });
}
