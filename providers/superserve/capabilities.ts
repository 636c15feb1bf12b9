/** What the superserve provider enforces (docs/PROVIDERS.md says how). Kept apart so the registry entry loads no SDK. */
import type { ProviderCapabilities } from "../provider.js";

export const SUPERSERVE_CAPABILITIES: ProviderCapabilities = {
  // Memory and vCPUs are the template's: no per-sandbox limit, no pids limit, no limit events.
  memoryLimit: false,
  pidsLimit: false,
  limitEvents: false,
  // commands.run has no stdin; commands.spawn has, but needs a global WebSocket (Node 22+).
  stdin: false,
  separateStderr: true,
  // The exec streams carry text (JSON strings): invalid UTF-8 does not survive.
  byteExactOutput: false,
  // Every sandbox is created with network.deny_out ["0.0.0.0/0"].
  networkIsolation: true,
  networkPolicy: false,
  hostWorkspace: false,
};
