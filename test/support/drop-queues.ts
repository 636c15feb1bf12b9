/**
 * Setup file of the integration project: after each test file, the queues
 * it made are removed from Redis, so repeated runs do not pile up keys.
 * (Hooks of a setup file run after the file's own, once its workers are closed.)
 */
import { afterAll } from "vitest";
import { dropTestQueues } from "./harness.js";

afterAll(async () => {
  await dropTestQueues();
});
