/**
 * The `network` field of the job contract: `"none"` (the default: no route
 * out), or an egress policy enforced by the worker's policy proxy:
 *
 *   { "default": "deny",
 *     "egress": [ "pypi.org", "*.pythonhosted.org",
 *                 { "host": "api.example.com", "methods": ["GET"], "paths": ["/v1/*"], "ratePerMinute": 120 },
 *                 { "host": "*.internal.example.com", "action": "deny" } ],
 *     "secrets": [ { "name": "API_TOKEN", "hosts": ["api.example.com"], "header": "Authorization", "format": "Bearer {}" } ],
 *     "maxBytes": 104857600 }
 *
 * Rules are evaluated in order and the first match wins (worker/egress/policy.ts).
 * The field names `default`, `egress`, `host`, `methods`, `paths`,
 * `ratePerMinute` and `action` are the contract; `ports`, `secrets` and
 * `maxBytes` extend it. The spec keeps what the user wrote; host patterns
 * are normalised (case, trailing dot, IDNA) where they are matched, and
 * validated here so a pattern that could never match is refused up front.
 */
import { isIP } from "node:net";
import { domainToASCII } from "node:url";
import { z } from "zod";

/** Absolute bounds of the contract; workers configure a lower maximum on rules (SANDQUEUE_EGRESS_MAX_RULES). */
export const NETWORK_POLICY_BOUNDS = {
  maxRules: 1024,
  maxMethods: 16,
  maxPaths: 64,
  maxPorts: 64,
  maxBoundSecrets: 16,
  maxHostsPerSecret: 16,
  ratePerMinute: { min: 1, max: 1_000_000 },
  maxBytes: { min: 1, max: 1024 ** 4 },
} as const;

/** The placeholder a bound secret's `format` holds once: where the value goes. */
export const SECRET_PLACEHOLDER = "{}";

/** What a host name becomes before it is matched: lower case, no trailing dot, IDNA (punycode), IPv6 without brackets. */
export function normaliseHost(host: string): string | null {
  let h = host.trim();
  if (h.startsWith("[") && h.endsWith("]")) h = h.slice(1, -1);
  if (isIP(h) === 6) return h.toLowerCase();
  if (h.endsWith(".")) h = h.slice(0, -1);
  if (h === "" || h.endsWith(".")) return null;
  // domainToASCII also turns IPv4 forms such as 0x7f.1 into 127.0.0.1, as URL parsers do.
  const ascii = domainToASCII(h);
  if (ascii === "") return null;
  if (isIP(ascii) === 4) return ascii;
  if (ascii.length > 253) return null;
  return ascii.split(".").every((label) => HOST_LABEL.test(label)) ? ascii : null;
}

/** One DNS label after IDNA: letters, digits, '-' and '_' (seen in real names), no '-' at either end. */
const HOST_LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;

/** Why a host pattern is refused, or null: an exact name or IP address, or `*.` followed by a name. */
export function hostPatternProblem(pattern: string): string | null {
  const wildcard = pattern.startsWith("*.");
  const rest = wildcard ? pattern.slice(2) : pattern;
  if (rest.includes("*")) return "may hold '*' only as a leading '*.' (a suffix wildcard such as *.example.com)";
  const host = normaliseHost(rest);
  if (host === null) return "is not a valid host name (letters, digits, '-' between dots; internationalised names are accepted)";
  if (wildcard && isIP(host) !== 0) return "cannot put '*.' before an IP address";
  return null;
}

/** Why a path pattern is refused, or null: absolute, printable, `*` matches any run of characters. */
function pathPatternProblem(p: string): string | null {
  if (!p.startsWith("/")) return "must start with '/'";
  if (p.length > 1024) return "must be at most 1024 characters";
  if (/[\s\0?#]/.test(p)) return "must not hold whitespace, NUL, '?' or '#' (paths are matched without the query)";
  return null;
}

const METHOD = /^[A-Za-z]{1,20}$/;

function text(what: string, max = 256): z.ZodString {
  const error = `expected ${what}`;
  return z.string({ error }).min(1, { error }).max(max, { error });
}

const hostPattern = text("a host pattern: a name such as api.example.com, or *.example.com (at most 260 characters)", 260).superRefine((p, ctx) => {
  const problem = hostPatternProblem(p);
  if (problem) ctx.addIssue({ code: "custom", message: `expected a host pattern (${JSON.stringify(p)} ${problem})` });
});

const intIn = (min: number, max: number, unit = ""): z.ZodNumber => {
  const error = `expected an integer from ${min} to ${max}${unit}`;
  return z.number({ error }).int({ error }).min(min, { error }).max(max, { error });
};

function uniqueArray<T extends z.ZodType>(item: T, what: string, max: number) {
  return z
    .array(item, { error: `expected an array of ${what}` })
    .min(1, { error: `expected at least one of ${what} (leave the field out to match any)` })
    .max(max, { error: `expected at most ${max} ${what}` });
}

export const EgressRuleSchema = z.strictObject({
  host: hostPattern,
  action: z.enum(["allow", "deny"], { error: 'expected "allow" or "deny"' }).default("allow"),
  methods: uniqueArray(
    z.string({ error: "expected an HTTP method such as GET" }).regex(METHOD, { error: "expected an HTTP method such as GET (letters only)" }),
    "HTTP methods",
    NETWORK_POLICY_BOUNDS.maxMethods,
  ).optional(),
  paths: uniqueArray(
    z.string({ error: "expected a path pattern such as /v1/*" }).superRefine((p, ctx) => {
      const problem = pathPatternProblem(p);
      if (problem) ctx.addIssue({ code: "custom", message: `expected a path pattern such as /v1/* (this one ${problem})` });
    }),
    "path patterns",
    NETWORK_POLICY_BOUNDS.maxPaths,
  ).optional(),
  ports: uniqueArray(intIn(1, 65535), "ports", NETWORK_POLICY_BOUNDS.maxPorts).optional(),
  ratePerMinute: intIn(NETWORK_POLICY_BOUNDS.ratePerMinute.min, NETWORK_POLICY_BOUNDS.ratePerMinute.max, " requests per minute").optional(),
});
export type EgressRule = z.infer<typeof EgressRuleSchema>;

/** A bare string is an allow rule for that host pattern. */
export const EgressEntrySchema = z.union([hostPattern, EgressRuleSchema], {
  error: 'expected a host pattern string or a rule object {"host", "action", "methods", "paths", "ports", "ratePerMinute"}',
});
export type EgressEntry = z.infer<typeof EgressEntrySchema>;

const SECRET_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** An HTTP header name (RFC 9110 token); hop-by-hop and framing headers cannot carry a secret. */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/;
const RESERVED_HEADERS = new Set(["host", "connection", "content-length", "transfer-encoding", "te", "trailer", "upgrade", "keep-alive", "proxy-connection", "proxy-authorization"]);

export const BoundSecretSchema = z.strictObject({
  name: z.string({ error: "expected a secret name" }).regex(SECRET_NAME, { error: "expected a secret name matching [A-Za-z_][A-Za-z0-9_]*" }),
  hosts: uniqueArray(hostPattern, "host patterns", NETWORK_POLICY_BOUNDS.maxHostsPerSecret),
  header: z
    .string({ error: "expected an HTTP header name such as Authorization" })
    .regex(HEADER_NAME, { error: "expected an HTTP header name such as Authorization" })
    .refine((h) => !RESERVED_HEADERS.has(h.toLowerCase()), { error: "expected a header that may carry a credential (not Host, Connection, Content-Length, ...)" }),
  format: z
    .string({ error: `expected a header value template holding ${SECRET_PLACEHOLDER} once, such as "Bearer {}"` })
    .max(256, { error: "expected at most 256 characters" })
    .refine((f) => f.split(SECRET_PLACEHOLDER).length === 2, {
      error: `expected a header value template holding ${SECRET_PLACEHOLDER} exactly once, such as "Bearer {}"`,
    })
    .refine((f) => !/[\r\n\0]/.test(f), { error: "expected a template without CR, LF or NUL" })
    .default(SECRET_PLACEHOLDER),
});
export type BoundSecret = z.infer<typeof BoundSecretSchema>;

export const NetworkPolicySchema = z.strictObject({
  default: z.enum(["deny", "allow"], { error: 'expected "deny" or "allow" (what happens to a request no rule matches)' }).default("deny"),
  egress: z
    .array(EgressEntrySchema, { error: "expected an array of rules (host pattern strings or rule objects)" })
    .max(NETWORK_POLICY_BOUNDS.maxRules, { error: `expected at most ${NETWORK_POLICY_BOUNDS.maxRules} rules` })
    .default([]),
  secrets: z
    .array(BoundSecretSchema, { error: "expected an array of bound secrets" })
    .max(NETWORK_POLICY_BOUNDS.maxBoundSecrets, { error: `expected at most ${NETWORK_POLICY_BOUNDS.maxBoundSecrets} bound secrets` })
    .refine((a) => new Set(a.map((s) => s.name)).size === a.length, { error: "expected each secret name once" })
    .default([]),
  maxBytes: intIn(NETWORK_POLICY_BOUNDS.maxBytes.min, NETWORK_POLICY_BOUNDS.maxBytes.max, " bytes").optional(),
});
export type NetworkPolicy = z.infer<typeof NetworkPolicySchema>;

export const NetworkSchema = z.union([z.literal("none"), NetworkPolicySchema], {
  error: 'expected "none" or an egress policy object {"default", "egress"}',
});
export type NetworkSpec = z.infer<typeof NetworkSchema>;

export function isNetworkPolicy(network: NetworkSpec): network is NetworkPolicy {
  return typeof network === "object";
}

/**
 * A bound secret never enters the sandbox: naming it also in the job's
 * `secrets` (which go to the environment) would defeat the binding.
 */
export function boundSecretClashes(secrets: readonly string[], network: NetworkSpec): { index: number; name: string }[] {
  if (!isNetworkPolicy(network)) return [];
  const bound = new Set(network.secrets.map((s) => s.name));
  return secrets.flatMap((name, index) => (bound.has(name) ? [{ index, name }] : []));
}
