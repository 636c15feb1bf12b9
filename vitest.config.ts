import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // Two cores: sandboxes, Redis and workers share them. Test files run one
    // at a time so timing-sensitive limits are not starved.
    fileParallelism: false,
    projects: [
      {
        test: {
          name: "unit",
          include: ["test/unit/**/*.test.ts"],
        },
      },
      {
        test: {
          name: "integration",
          include: ["test/integration/**/*.test.ts", "test/security/**/*.test.ts", "test/chaos/**/*.test.ts"],
          setupFiles: ["test/support/drop-queues.ts"],
          testTimeout: 60_000,
          hookTimeout: 60_000,
          pool: "forks",
        },
      },
    ],
  },
});
