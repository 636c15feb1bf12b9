/** What the northflank provider enforces (docs/PROVIDERS.md says how). Kept apart so the registry entry loads no SDK. */
import type { ProviderCapabilities } from "../provider.js";
import { shimCapabilities } from "../remote/shim-capabilities.js";

// Memory and CPU are the deployment plan's, per service: no per-job limit, no pids limit. The session's
// stdin carries nothing of the job's. Commands run directly only where the instance has no interface
// but loopback already; otherwise under the shim.
export const NORTHFLANK_CAPABILITIES: ProviderCapabilities = shimCapabilities(false);
