/**
 * The policy engine: a job's `network` policy compiled once, then asked
 * about every request the proxy sees. Rules are tried in order and the
 * first one that matches decides; nothing matching falls to `default`.
 *
 * A rule matches a request when its host pattern matches the normalised
 * host (exact, or `*.suffix` for names strictly below the suffix), and its
 * `ports`, `methods` and `paths`, where given, include the request's.
 * HTTPS through CONNECT shows only host and port: connectDecision() says
 * whether those alone decide, or whether the proxy must look inside (TLS
 * terminated with the worker's CA) to apply methods and paths per request.
 */
import { SECRET_PLACEHOLDER, normaliseHost, type BoundSecret, type EgressEntry, type NetworkPolicy } from "../../producer/network-policy.js";

export type Action = "allow" | "deny";

export interface HostMatcher {
  /** The pattern as the user wrote it. */
  readonly pattern: string;
  matches(host: string): boolean;
}

export interface CompiledRule {
  /** Position in `network.egress`. */
  readonly index: number;
  /** `network.egress[2]`: how refusals name the rule. */
  readonly ref: string;
  /** The rule as the user wrote it (JSON), for refusal messages. */
  readonly text: string;
  readonly action: Action;
  readonly host: HostMatcher;
  readonly methods: ReadonlySet<string> | null;
  readonly paths: readonly RegExp[] | null;
  readonly ports: ReadonlySet<number> | null;
  readonly ratePerMinute: number | null;
}

export interface CompiledBinding {
  readonly name: string;
  readonly hosts: readonly HostMatcher[];
  /** Lower case, as Node's header objects hold it. */
  readonly header: string;
  readonly format: string;
}

export interface CompiledPolicy {
  readonly defaultAction: Action;
  readonly rules: readonly CompiledRule[];
  readonly bindings: readonly CompiledBinding[];
}

/** What decided a request: a rule, or the policy's default when no rule matched. */
export interface Decision {
  readonly action: Action;
  readonly rule: CompiledRule | null;
}

/** A CONNECT: refused, tunnelled blind, or opened (TLS terminated) so each request inside is decided. */
export type ConnectDecision =
  | { readonly kind: "deny"; readonly rule: CompiledRule | null }
  | { readonly kind: "tunnel"; readonly rule: CompiledRule | null }
  | { readonly kind: "inspect" };

export interface RequestFacts {
  /** Normalised host (normaliseHost). */
  host: string;
  port: number;
  /** Upper case. */
  method: string;
  /** The decoded path from pathForMatching(). */
  path: string;
}

export function hostMatcher(pattern: string): HostMatcher {
  if (pattern.startsWith("*.")) {
    const suffix = `.${normaliseOrThrow(pattern.slice(2))}`;
    return { pattern, matches: (h) => h.length > suffix.length && h.endsWith(suffix) };
  }
  const exact = normaliseOrThrow(pattern);
  return { pattern, matches: (h) => h === exact };
}

function normaliseOrThrow(host: string): string {
  const h = normaliseHost(host);
  // The spec was validated: a pattern that does not normalise is a bug, never a silent non-match.
  if (h === null) throw new Error(`host pattern ${JSON.stringify(host)} does not normalise`);
  return h;
}

/** `/v1/*`: `*` matches any run of characters (slashes included); everything else is literal. */
function pathMatcher(pattern: string): RegExp {
  return new RegExp(`^${pattern.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`, "s");
}

function compileRule(entry: EgressEntry, index: number): CompiledRule {
  const rule = typeof entry === "string" ? { host: entry, action: "allow" as const } : entry;
  return {
    index,
    ref: `network.egress[${index}]`,
    text: JSON.stringify(entry),
    action: rule.action,
    host: hostMatcher(rule.host),
    methods: "methods" in rule && rule.methods ? new Set(rule.methods.map((m) => m.toUpperCase())) : null,
    paths: "paths" in rule && rule.paths ? rule.paths.map(pathMatcher) : null,
    ports: "ports" in rule && rule.ports ? new Set(rule.ports) : null,
    ratePerMinute: "ratePerMinute" in rule && rule.ratePerMinute !== undefined ? rule.ratePerMinute : null,
  };
}

function compileBinding(b: BoundSecret): CompiledBinding {
  return { name: b.name, hosts: b.hosts.map(hostMatcher), header: b.header.toLowerCase(), format: b.format };
}

export function compilePolicy(policy: NetworkPolicy): CompiledPolicy {
  return {
    defaultAction: policy.default,
    rules: policy.egress.map(compileRule),
    bindings: policy.secrets.map(compileBinding),
  };
}

function restricted(rule: CompiledRule): boolean {
  return rule.methods !== null || rule.paths !== null;
}

function hostAndPortMatch(rule: CompiledRule, host: string, port: number): boolean {
  return rule.host.matches(host) && (rule.ports === null || rule.ports.has(port));
}

/** First match wins: host, port, method and path all known (plain HTTP, or inside opened TLS). */
export function decide(policy: CompiledPolicy, req: RequestFacts): Decision {
  for (const rule of policy.rules) {
    if (!hostAndPortMatch(rule, req.host, req.port)) continue;
    if (rule.methods && !rule.methods.has(req.method)) continue;
    if (rule.paths && !rule.paths.some((re) => re.test(req.path))) continue;
    return { action: rule.action, rule };
  }
  return { action: policy.defaultAction, rule: null };
}

/**
 * A CONNECT shows host and port only. When the first rule matching them
 * has no methods or paths, it decides the whole tunnel. When it has, the
 * outcome depends on each request: the proxy opens the TLS (worker CA) and
 * decides each request with decide(); unless no request could be allowed
 * whatever its method and path, which refuses the CONNECT itself. Hosts
 * with a bound secret are always opened (bindingsFor()).
 */
export function connectDecision(policy: CompiledPolicy, host: string, port: number): ConnectDecision {
  let sawRestricted = false;
  let anyAllow = false;
  for (const rule of policy.rules) {
    if (!hostAndPortMatch(rule, host, port)) continue;
    if (restricted(rule)) {
      sawRestricted = true;
      anyAllow ||= rule.action === "allow";
      continue;
    }
    if (!sawRestricted) return rule.action === "allow" ? { kind: "tunnel", rule } : { kind: "deny", rule };
    return anyAllow || rule.action === "allow" ? { kind: "inspect" } : { kind: "deny", rule };
  }
  if (!sawRestricted) return policy.defaultAction === "allow" ? { kind: "tunnel", rule: null } : { kind: "deny", rule: null };
  return anyAllow || policy.defaultAction === "allow" ? { kind: "inspect" } : { kind: "deny", rule: null };
}

/** The bound secrets whose hosts include `host`. */
export function bindingsFor(policy: CompiledPolicy, host: string): CompiledBinding[] {
  return policy.bindings.filter((b) => b.hosts.some((m) => m.matches(host)));
}

/** The header value a binding sends: its format with the secret in place of `{}`. */
export function bindingValue(binding: CompiledBinding, secret: string): string {
  return binding.format.replace(SECRET_PLACEHOLDER, () => secret);
}

/**
 * The path a request is matched on: the query dropped, each segment
 * percent-decoded. A path an upstream could read differently from the
 * proxy is refused (null): `.` or `..` segments (also encoded), an encoded
 * `/` or `\`, a backslash, an empty segment (`//`) or a NUL, since
 * `/v1/../admin` or `/v1/%2e%2e/admin` would otherwise pass a `/v1/*` rule.
 */
export function pathForMatching(rawPath: string): string | null {
  const q = rawPath.search(/[?#]/);
  const path = q === -1 ? rawPath : rawPath.slice(0, q);
  if (path === "" || path === "*") return "/";
  if (!path.startsWith("/") || path.includes("\\")) return null;
  const segments = path.slice(1).split("/");
  const decoded: string[] = [];
  for (let i = 0; i < segments.length; i++) {
    const raw = segments[i]!;
    if (raw === "" && i !== segments.length - 1) return null;
    let seg: string;
    try {
      seg = decodeURIComponent(raw);
    } catch {
      return null;
    }
    if (seg === "." || seg === ".." || /[/\\\0]/.test(seg)) return null;
    decoded.push(seg);
  }
  return `/${decoded.join("/")}`;
}

/** How a refusal names what decided it. */
export function describeDecision(d: { rule: CompiledRule | null }, policy: CompiledPolicy): string {
  return d.rule ? `${d.rule.ref} ${d.rule.text}` : `network.default "${policy.defaultAction}" (no rule of network.egress matches)`;
}
