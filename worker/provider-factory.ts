/** Builds the configured sandbox provider. Backends load only when chosen. */
import type { SandboxProvider } from "../providers/provider.js";
import type { WorkerConfig } from "./config.js";

export async function createProvider(config: WorkerConfig): Promise<SandboxProvider> {
  switch (config.provider) {
    case "local": {
      const { LocalProvider } = await import("../providers/local/index.js");
      return new LocalProvider({ workRoot: config.workRoot, imagesDir: config.imagesDir, prestart: config.pool.minIdle });
    }
    case "docker": {
      const { DockerProvider } = await import("../providers/docker/index.js");
      return new DockerProvider({
        dockerHost: config.dockerHost,
        owner: config.workerId,
        pool: config.pool,
      });
    }
  }
}
