/** What the northflank provider enforces (docs/PROVIDERS.md says how). Kept apart so the registry entry loads no SDK. */
import type { ProviderCapabilities } from "../provider.js";

export const NORTHFLANK_CAPABILITIES: ProviderCapabilities = {
  // Memory and CPU are the deployment plan's, per service: no per-job limit, no pids limit.
  memoryLimit: false,
  pidsLimit: false,
  limitEvents: false,
  // The exec shim gives the command /dev/null (the session's stdin carries nothing of the job's).
  stdin: false,
  separateStderr: true,
  // The shim sends both streams base64-encoded: bytes survive.
  byteExactOutput: true,
  // The shim runs the command in a network namespace of its own (or only where the instance has no
  // interface but loopback already); otherwise it runs nothing (fails closed).
  networkIsolation: true,
  networkPolicy: false,
  hostWorkspace: false,
};
