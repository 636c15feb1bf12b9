/** Registry entry of the docker (Docker Engine API, Podman compat) provider. */
import path from "node:path";
import { defineProvider } from "../definition.js";
import { settingTypes } from "../settings.js";

export const dockerDefinition = defineProvider({
  name: "docker",
  summary: "one container per job through the Docker Engine API (Docker, or Podman's compatible service)",
  settings: {
    dockerHost: {
      env: "DOCKER_HOST",
      doc: "the engine's API endpoint",
      defaultDoc: "unix:///var/run/docker.sock",
      ...settingTypes.url(["unix", "tcp"]),
    },
    poolMinIdle: {
      env: "SANDQUEUE_POOL_MIN_IDLE",
      doc: "containers kept ready per (image, limits)",
      // Two ready containers doubled back-to-back throughput over one (docs/PERFORMANCE.md).
      default: () => "2",
      ...settingTypes.int(0, 64),
    },
    poolMaxSize: {
      env: "SANDQUEUE_POOL_MAX_SIZE",
      doc: "most ready containers kept in all",
      default: () => "4",
      ...settingTypes.int(0, 256),
    },
  },
  capabilities: {
    memoryLimit: true,
    pidsLimit: true,
    limitEvents: true,
    stdin: true,
    separateStderr: true,
    byteExactOutput: true,
    networkIsolation: true,
    networkPolicy: true,
    hostWorkspace: false,
  },
  async create(s, ctx) {
    const { DockerProvider } = await import("./docker-provider.js");
    return new DockerProvider({
      dockerHost: s.dockerHost,
      owner: ctx.workerId,
      pool: { minIdle: s.poolMinIdle ?? 2, maxSize: s.poolMaxSize ?? 4 },
      egressDir: path.join(ctx.stateDir, "egress"),
    });
  },
});
