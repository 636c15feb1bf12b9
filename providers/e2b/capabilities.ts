/** What the e2b provider enforces (docs/PROVIDERS.md says how). Kept apart so the registry entry loads no SDK. */
import type { ProviderCapabilities } from "../provider.js";

export const E2B_CAPABILITIES: ProviderCapabilities = {
  // CPU and memory are the template's: no per-sandbox limit, no pids limit, no limit events.
  memoryLimit: false,
  pidsLimit: false,
  limitEvents: false,
  // commands.start({stdin: true}) + sendStdin + closeStdin (envd >= 0.5.2).
  stdin: true,
  separateStderr: true,
  // envd sends bytes, but the SDK hands them to onStdout/onStderr through a TextDecoder: invalid UTF-8 becomes U+FFFD.
  byteExactOutput: false,
  // Every sandbox is created with allowInternetAccess: false (the service denies egress).
  networkIsolation: true,
  networkPolicy: false,
  hostWorkspace: false,
};
