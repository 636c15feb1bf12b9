/** Registry entry of the local (bubblewrap) provider. */
import path from "node:path";
import { defineProvider } from "../definition.js";
import { settingTypes } from "../settings.js";

export const localDefinition = defineProvider({
  name: "local",
  summary: "bubblewrap sandboxes on the worker's own host, limits by cgroups",
  settings: {
    workRoot: {
      env: "SANDQUEUE_WORK_DIR",
      doc: "where sandbox workspaces live (a tmpfs is mounted over it)",
      default: (ctx) => path.join(ctx.stateDir, "work"),
      defaultDoc: ".sandqueue/work",
      ...settingTypes.path(),
    },
    imagesDir: {
      env: "SANDQUEUE_IMAGES_DIR",
      doc: "root filesystems of images other than `host`, one directory per image",
      default: (ctx) => path.join(ctx.stateDir, "images"),
      defaultDoc: ".sandqueue/images",
      ...settingTypes.path(),
    },
    prestart: {
      env: "SANDQUEUE_POOL_MIN_IDLE",
      doc: "sandboxes kept pre-started per recently used image",
      default: (ctx) => String(ctx.concurrency),
      defaultDoc: "the worker's concurrency",
      ...settingTypes.int(0, 64),
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
    hostWorkspace: true,
  },
  async create(s, ctx) {
    const { LocalProvider } = await import("./local-provider.js");
    return new LocalProvider({ workRoot: s.workRoot, imagesDir: s.imagesDir, prestart: s.prestart, owner: ctx.workerId });
  },
});
