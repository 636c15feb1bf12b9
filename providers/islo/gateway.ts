/**
 * A job's egress policy as an islo gateway profile: `default` becomes the
 * profile's default_action; each rule, in order, one islo rule per path
 * (host_pattern, path_pattern, methods, rate_limit_rpm, action) with
 * priorities rising in the job's order, since islo evaluates lower
 * priorities first and sandqueue's first match wins. What islo's rules
 * cannot say is refused (CAPABILITY_UNSUPPORTED) before anything is created.
 *
 * The policy comes as `SandboxSpec.egressPolicy` (the job contract's, by shape).
 */
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import type { SandboxEgressPolicy, SandboxEgressRule } from "../provider.js";

/** The job contract's policy as providers see it. */
export type EgressPolicyLike = SandboxEgressPolicy;
type EgressRuleLike = SandboxEgressRule;

export interface IsloRuleBody {
  host_pattern: string;
  path_pattern?: string;
  methods?: string[];
  rate_limit_rpm?: number;
  action: "allow" | "deny";
  priority: number;
}

export interface IsloProfilePlan {
  profile: { name: string; description: string; default_action: "allow" | "deny"; internet_enabled: boolean; is_default: false };
  rules: IsloRuleBody[];
}

/** Priority step between rules: room to insert by hand later. */
const STEP = 10;

export function profilePlan(name: string, owner: string, policy: EgressPolicyLike): IsloProfilePlan {
  const problems: string[] = [];
  if (policy.secrets && policy.secrets.length > 0) {
    problems.push("network.secrets: islo gateway rules cannot inject a secret held by the worker (their auth_strategy uses credentials stored in islo)");
  }
  if (policy.maxBytes !== undefined) problems.push("network.maxBytes: islo gateway profiles have no byte cap");
  const rules: IsloRuleBody[] = [];
  policy.egress.forEach((entry, i) => {
    const r: EgressRuleLike = typeof entry === "string" ? { host: entry } : entry;
    if (r.ports) problems.push(`network.egress[${i}].ports: islo gateway rules match hosts, not ports`);
    for (const path of r.paths ?? [undefined]) {
      rules.push({
        host_pattern: r.host,
        ...(path === undefined ? {} : { path_pattern: path }),
        ...(r.methods ? { methods: r.methods.map((m) => m.toUpperCase()) } : {}),
        ...(r.ratePerMinute === undefined ? {} : { rate_limit_rpm: r.ratePerMinute }),
        action: r.action ?? "allow",
        priority: (rules.length + 1) * STEP,
      });
    }
  });
  if (problems.length) {
    throw new ProviderError(ErrorCodes.CAPABILITY_UNSUPPORTED, `the islo provider cannot enforce this network policy: ${problems.join("; ")}`, { retryable: false });
  }
  return {
    profile: {
      name,
      description: `sandqueue job policy; owner ${owner}`,
      default_action: policy.default,
      // As in the seed PR: traffic goes through the gateway's rules only.
      internet_enabled: policy.default === "allow",
      is_default: false,
    },
    rules,
  };
}
