/**
 * The egress proxy's settings (SANDQUEUE_EGRESS_*, parsed with the rest of
 * the worker's configuration in worker/config.ts), and the per-job checks
 * against them: a policy with more rules, or a byte cap above what this
 * worker allows, is refused (LIMIT_ABOVE_MAX), never trimmed.
 */
import { isIP } from "node:net";
import { ErrorCodes, SpecError } from "../../errors/index.js";
import { isNetworkPolicy, type NetworkSpec } from "../../producer/network-policy.js";

export interface EgressConfig {
  /** Most rules a job's `network.egress` may hold on this worker. */
  readonly maxRules: number;
  /** Per-job cap on egress traffic, both directions, bytes; also the most a job's `network.maxBytes` may ask. */
  readonly maxBytes: number;
  /** Lifts the refusal of loopback, private, link-local and the worker's own addresses. */
  readonly allowPrivate: boolean;
  /** A hosts-format file that replaces DNS for the proxy (tests, air-gapped mirrors). */
  readonly hostsFile: string | undefined;
  /** DNS servers the proxy asks instead of the system resolver (`ip` or `ip:port`). */
  readonly dnsServers: readonly string[] | undefined;
  /** Addresses or CIDR ranges refused on top of the built-in ones (even with allowPrivate). */
  readonly denyAddresses: readonly string[];
  /** PEM file the upstream certificates of opened TLS are verified against; default: the system store. */
  readonly upstreamCaFile: string | undefined;
  readonly connectTimeoutMs: number;
}

export const DEFAULT_EGRESS_CONFIG: EgressConfig = {
  maxRules: 256,
  maxBytes: 1024 ** 3,
  allowPrivate: false,
  hostsFile: undefined,
  dnsServers: undefined,
  denyAddresses: [],
  upstreamCaFile: undefined,
  connectTimeoutMs: 10_000,
};

/** Why `text` is no address or CIDR range, or null. */
export function cidrProblem(text: string): string | null {
  const [addr, bits, extra] = text.split("/");
  if (extra !== undefined || addr === undefined) return "is not an address or CIDR range";
  const family = isIP(addr);
  if (family === 0) return "is not an IP address";
  if (bits === undefined) return null;
  const n = Number(bits);
  const max = family === 4 ? 32 : 128;
  return /^\d{1,3}$/.test(bits) && n <= max ? null : `has a prefix length outside 0..${max}`;
}

/** Refuses a policy above this worker's maximums (rules, byte cap). */
export function checkEgressLimits(network: NetworkSpec, config: EgressConfig): void {
  if (!isNetworkPolicy(network)) return;
  const problems: string[] = [];
  if (network.egress.length > config.maxRules) {
    problems.push(`network.egress: ${network.egress.length} rules is above this worker's maximum of ${config.maxRules}`);
  }
  if (network.maxBytes !== undefined && network.maxBytes > config.maxBytes) {
    problems.push(`network.maxBytes: ${network.maxBytes} is above this worker's maximum of ${config.maxBytes}`);
  }
  if (problems.length) throw new SpecError(ErrorCodes.LIMIT_ABOVE_MAX, problems.join("; "), { details: { problems } });
}
