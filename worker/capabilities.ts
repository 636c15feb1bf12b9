/**
 * Capability checks: a job that explicitly asks for something the worker's
 * provider cannot enforce is refused before anything runs, naming the field
 * and the capability, instead of running under limits it did not get.
 */
import { ErrorCodes, SpecError } from "../errors/index.js";
import type { JobSpec } from "../producer/job-spec.js";
import { isNetworkPolicy } from "../producer/network-policy.js";
import type { ProviderCapabilities } from "../providers/provider.js";

export function checkCapabilities(spec: JobSpec, caps: ProviderCapabilities, provider: string): void {
  const problems: string[] = [];
  const need = (asked: boolean, cap: keyof ProviderCapabilities, field: string): void => {
    if (asked && !caps[cap]) problems.push(`${field}: the ${provider} provider cannot enforce it (capability ${cap})`);
  };
  need(spec.limits.memoryMb !== undefined, "memoryLimit", "limits.memoryMb");
  need(spec.limits.pids !== undefined, "pidsLimit", "limits.pids");
  // Every job needs the network cut: "none" has no route out, a policy has one route, to the worker's proxy.
  need(true, "networkIsolation", "network");
  need(isNetworkPolicy(spec.network), "networkPolicy", "network");
  if (problems.length) {
    throw new SpecError(ErrorCodes.CAPABILITY_UNSUPPORTED, problems.join("; "), { details: { problems } });
  }
}
