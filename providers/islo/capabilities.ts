/**
 * What the islo provider enforces, as islo's API documents it. Kept apart
 * from the definition so the provider and its registry entry share one copy.
 */
import type { ProviderCapabilities } from "../provider.js";

export const isloCapabilities: ProviderCapabilities = {
  // memory_mb sizes the sandbox VM: a hard limit on everything in it.
  memoryLimit: true,
  // islo has no process-count setting.
  pidsLimit: false,
  // An exec result has an exit code only: an OOM kill is a 137 like any SIGKILL.
  limitEvents: false,
  // POST /exec takes no input.
  stdin: false,
  separateStderr: true,
  // ExecResultResponse.stdout/stderr are strings: output is decoded as UTF-8 text.
  byteExactOutput: false,
  // Sandboxes are created with internet_enabled: false (and the operator's profile, if named).
  networkIsolation: true,
  // A job's policy becomes a gateway profile islo enforces (providers/islo/gateway.ts); what its
  // rules cannot say (bound secrets, byte caps, ports) is refused with CAPABILITY_UNSUPPORTED.
  networkPolicy: true,
  hostWorkspace: false,
};
