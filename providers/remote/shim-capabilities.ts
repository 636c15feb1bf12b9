/**
 * What a provider enforces when every command runs under the exec shim
 * (providers/remote/exec-shim.ts), whatever the service: the shim gives the
 * command /dev/null for stdin, sends both streams base64-encoded (bytes
 * survive), and runs the command in a network namespace of its own or not
 * at all (fails closed). Limits are the service's (its plan, its pod), so
 * only `memoryLimit` differs between services. Kept free of imports that
 * load code: registry entries use it.
 */
import type { ProviderCapabilities } from "../provider.js";

export function shimCapabilities(memoryLimit: boolean): ProviderCapabilities {
  return {
    memoryLimit,
    pidsLimit: false,
    limitEvents: false,
    stdin: false,
    separateStderr: true,
    byteExactOutput: true,
    networkIsolation: true,
    networkPolicy: false,
    hostWorkspace: false,
  };
}
