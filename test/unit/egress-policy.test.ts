import { describe, expect, it } from "vitest";
import { ErrorCodes, SpecError } from "../../errors/index.js";
import { parseJobSpec } from "../../producer/job-spec.js";
import { normaliseHost, type NetworkPolicy } from "../../producer/network-policy.js";
import { parseWorkerConfig } from "../../worker/config.js";
import { checkEgressLimits, DEFAULT_EGRESS_CONFIG } from "../../worker/egress/config.js";
import { bindingValue, bindingsFor, compilePolicy, connectDecision, decide, describeDecision, pathForMatching, type CompiledPolicy } from "../../worker/egress/policy.js";
import { TokenBucket } from "../../worker/egress/rate-limit.js";
import { checkCapabilities } from "../../worker/capabilities.js";
import { PROVIDERS } from "../../providers/registry.js";

function specError(input: unknown): SpecError {
  try {
    parseJobSpec(input);
  } catch (err) {
    if (err instanceof SpecError) return err;
    throw err;
  }
  throw new Error("expected the spec to be rejected");
}

function policyOf(network: unknown): NetworkPolicy {
  const spec = parseJobSpec({ kind: "shell", script: "true", network });
  if (spec.network === "none") throw new Error("expected a policy");
  return spec.network;
}

/** The issue's example policy. */
const EXAMPLE = {
  default: "deny",
  egress: [
    "pypi.org",
    "*.pythonhosted.org",
    { host: "api.example.com", methods: ["GET"], paths: ["/v1/*"], ratePerMinute: 120 },
    { host: "*.internal.example.com", action: "deny" },
  ],
};

const get = (host: string, path = "/", method = "GET", port = 443) => ({ host, port, method, path });

describe("network policy: the job contract", () => {
  it("accepts the issue's example as written and keeps it as written", () => {
    const spec = parseJobSpec({ kind: "shell", script: "pip install x", network: EXAMPLE });
    // Rule objects get their default action; nothing else is rewritten (hosts are normalised where matched).
    expect(spec.network).toEqual({
      ...EXAMPLE,
      egress: [...EXAMPLE.egress.slice(0, 2), { ...(EXAMPLE.egress[2] as object), action: "allow" }, EXAMPLE.egress[3]],
      secrets: [],
    });
    expect(parseJobSpec({ kind: "shell", script: "x" }).network).toBe("none");
    // default is "deny" when left out; an empty egress list denies everything.
    expect(policyOf({ egress: [] })).toEqual({ default: "deny", egress: [], secrets: [] });
  });

  it("names every bad field of a policy with its path", () => {
    const err = specError({
      kind: "shell",
      script: "x",
      network: {
        default: "maybe",
        egress: ["ok.example", "*", "a..b", { host: "x.com", methods: [], ratePerMinute: 0 }, { host: "y.com", paths: ["v1/*"], action: "block" }, 7, { host: "*.10.0.0.1" }],
        extra: 1,
      },
    });
    expect(err.code).toBe(ErrorCodes.SPEC_INVALID);
    const byPath = Object.fromEntries((err.details?.issues as { path: string; message: string }[]).map((i) => [i.path, i.message]));
    expect(Object.keys(byPath).sort()).toEqual(
      [
        "network",
        "network.default",
        "network.egress[1]",
        "network.egress[2]",
        "network.egress[3].methods",
        "network.egress[3].ratePerMinute",
        "network.egress[4].paths[0]",
        "network.egress[4].action",
        "network.egress[5]",
        "network.egress[6].host",
      ].sort(),
    );
    expect(byPath["network"]).toContain("unknown field(s) 'extra'");
    expect(byPath["network.default"]).toContain('expected "deny" or "allow"');
    expect(byPath["network.egress[1]"]).toContain("'*' only as a leading '*.'");
    expect(byPath["network.egress[2]"]).toContain('"a..b" is not a valid host name');
    expect(byPath["network.egress[3].ratePerMinute"]).toContain("expected an integer from 1 to 1000000 requests per minute (got 0)");
    expect(byPath["network.egress[4].paths[0]"]).toContain("must start with '/'");
    expect(byPath["network.egress[6].host"]).toContain("cannot put '*.' before an IP address");
    expect(specError({ kind: "shell", script: "x", network: "host" }).message).toContain('network: expected "none" or an egress policy object');
  });

  it("refuses a secret bound to hosts that is also in the environment, and bad bindings", () => {
    const err = specError({
      kind: "shell",
      script: "x",
      secrets: ["A", "TOKEN"],
      network: { egress: ["api.example.com"], secrets: [{ name: "TOKEN", hosts: ["api.example.com"], header: "Authorization", format: "Bearer {}" }] },
    });
    expect(err.message).toContain("secrets[1]: TOKEN is bound to hosts in network.secrets");
    const bad = specError({
      kind: "shell",
      script: "x",
      network: { secrets: [{ name: "T", hosts: [], header: "Host", format: "Bearer" }] },
    });
    const paths = (bad.details?.issues as { path: string }[]).map((i) => i.path).sort();
    expect(paths).toEqual(["network.secrets[0].format", "network.secrets[0].header", "network.secrets[0].hosts"]);
  });

  it("normalises hosts: case, trailing dot, IDNA, IPv4 forms, IPv6 brackets", () => {
    expect(normaliseHost("PyPI.org.")).toBe("pypi.org");
    expect(normaliseHost("Bücher.Example")).toBe("xn--bcher-kva.example");
    expect(normaliseHost("xn--bcher-kva.example")).toBe("xn--bcher-kva.example");
    expect(normaliseHost("0x7f.1")).toBe("127.0.0.1");
    expect(normaliseHost("[::FFFF:127.0.0.1]")).toBe("::ffff:127.0.0.1");
    for (const bad of ["", ".", "a..b", "exa mple.com", "-a.com", "a.com..", `${"a".repeat(64)}.com`]) expect(normaliseHost(bad), bad).toBeNull();
  });

  it("refuses more rules or a larger byte cap than the worker allows (LIMIT_ABOVE_MAX), from its configuration", () => {
    const config = parseWorkerConfig({ SANDQUEUE_EGRESS_MAX_RULES: "2", SANDQUEUE_EGRESS_MAX_BYTES: "1000" }).egress;
    expect(config.maxRules).toBe(2);
    const three = policyOf({ egress: ["a.com", "b.com", "c.com"], maxBytes: 5000 });
    try {
      checkEgressLimits(three, config);
      throw new Error("expected a refusal");
    } catch (err) {
      expect((err as SpecError).code).toBe(ErrorCodes.LIMIT_ABOVE_MAX);
      expect((err as Error).message).toContain("network.egress: 3 rules is above this worker's maximum of 2");
      expect((err as Error).message).toContain("network.maxBytes: 5000 is above this worker's maximum of 1000");
    }
    expect(() => checkEgressLimits(policyOf({ egress: ["a.com"] }), config)).not.toThrow();
    expect(() => checkEgressLimits("none", DEFAULT_EGRESS_CONFIG)).not.toThrow();
    expect(() => parseWorkerConfig({ SANDQUEUE_EGRESS_DENY_ADDRESSES: "10.0.0.0/33" })).toThrow(/SANDQUEUE_EGRESS_DENY_ADDRESSES/);
    expect(() => parseWorkerConfig({ SANDQUEUE_EGRESS_ALLOW_PRIVATE: "yes" })).toThrow(/SANDQUEUE_EGRESS_ALLOW_PRIVATE="yes": expected true or false/);
    expect(parseWorkerConfig({ SANDQUEUE_EGRESS_DNS_SERVERS: "127.0.0.1:5353, [::1]:53" }).egress.dnsServers).toEqual(["127.0.0.1:5353", "[::1]:53"]);
  });

  it("a job with a policy is refused by a provider that does not enforce policies, naming the capability", () => {
    const spec = parseJobSpec({ kind: "shell", script: "x", network: EXAMPLE });
    const caps = { ...PROVIDERS[0]!.capabilities, networkPolicy: false };
    expect(() => checkCapabilities(spec, caps, "p")).toThrow(/network: the p provider cannot enforce it \(capability networkPolicy\)/);
    expect(() => checkCapabilities(parseJobSpec({ kind: "shell", script: "x" }), caps, "p")).not.toThrow();
  });
});

describe("network policy: the engine", () => {
  const example = compilePolicy(policyOf(EXAMPLE));

  it("first match wins; exact names and *. suffixes, case-insensitive after normalisation", () => {
    expect(decide(example, get("pypi.org"))).toMatchObject({ action: "allow", rule: { index: 0 } });
    expect(decide(example, get("files.pythonhosted.org"))).toMatchObject({ action: "allow", rule: { index: 1 } });
    expect(decide(example, get("a.b.pythonhosted.org"))).toMatchObject({ action: "allow", rule: { index: 1 } });
    // *.suffix does not match the suffix itself, nor a name that merely ends with it.
    expect(decide(example, get("pythonhosted.org"))).toMatchObject({ action: "deny", rule: null });
    expect(decide(example, get("evilpythonhosted.org"))).toMatchObject({ action: "deny", rule: null });
    expect(decide(example, get("db.internal.example.com"))).toMatchObject({ action: "deny", rule: { index: 3 } });
    expect(decide(example, get("pypi.org.evil.com"))).toMatchObject({ action: "deny", rule: null });
    // Rules written in any case or with IDNA match the normalised request host.
    const idn = compilePolicy(policyOf({ egress: ["BÜCHER.example.", "*.Example.ORG"] }));
    expect(decide(idn, get(normaliseHost("bücher.EXAMPLE")!))).toMatchObject({ action: "allow", rule: { index: 0 } });
    expect(decide(idn, get(normaliseHost("A.example.org.")!))).toMatchObject({ action: "allow", rule: { index: 1 } });
  });

  it("methods and paths: a rule matches only requests with one of its methods and paths", () => {
    expect(decide(example, get("api.example.com", "/v1/items/3"))).toMatchObject({ action: "allow", rule: { index: 2 } });
    expect(decide(example, get("api.example.com", "/v1/items", "POST"))).toMatchObject({ action: "deny", rule: null });
    expect(decide(example, get("api.example.com", "/v2/items"))).toMatchObject({ action: "deny", rule: null });
    expect(decide(example, get("api.example.com", "/v1"))).toMatchObject({ action: "deny", rule: null });
    const order = compilePolicy(policyOf({ egress: [{ host: "h.com", methods: ["post"], action: "deny" }, "h.com"] }));
    expect(decide(order, get("h.com", "/", "POST"))).toMatchObject({ action: "deny", rule: { index: 0 } });
    expect(decide(order, get("h.com", "/", "GET"))).toMatchObject({ action: "allow", rule: { index: 1 } });
    const exactPath = compilePolicy(policyOf({ egress: [{ host: "h.com", paths: ["/simple/", "/a.b"] }] }));
    expect(decide(exactPath, get("h.com", "/simple/")).action).toBe("allow");
    expect(decide(exactPath, get("h.com", "/simple/x")).action).toBe("deny");
    expect(decide(exactPath, get("h.com", "/aXb")).action).toBe("deny"); // '.' is literal
  });

  it("ports restrict a rule; default allow lets unmatched requests through", () => {
    const p = compilePolicy(policyOf({ default: "allow", egress: [{ host: "h.com", ports: [443] }, { host: "*.bad.com", action: "deny" }] }));
    expect(decide(p, get("h.com", "/", "GET", 443))).toMatchObject({ action: "allow", rule: { index: 0 } });
    expect(decide(p, get("h.com", "/", "GET", 22))).toMatchObject({ action: "allow", rule: null });
    expect(decide(p, get("x.bad.com"))).toMatchObject({ action: "deny", rule: { index: 1 } });
    expect(describeDecision(decide(p, get("x.bad.com")), p)).toBe('network.egress[1] {"host":"*.bad.com","action":"deny"}');
    expect(describeDecision(decide(example, get("nope.com")), example)).toBe('network.default "deny" (no rule of network.egress matches)');
  });

  it("a CONNECT is decided on its host when it can be, and opened when methods or paths must be seen", () => {
    expect(connectDecision(example, "pypi.org", 443)).toMatchObject({ kind: "tunnel", rule: { index: 0 } });
    expect(connectDecision(example, "x.internal.example.com", 443)).toMatchObject({ kind: "deny", rule: { index: 3 } });
    expect(connectDecision(example, "nowhere.com", 443)).toMatchObject({ kind: "deny", rule: null });
    expect(connectDecision(example, "api.example.com", 443)).toEqual({ kind: "inspect" });
    // Every request on the host would be denied whatever its method: the CONNECT is refused outright.
    const allDeny = compilePolicy(policyOf({ egress: [{ host: "h.com", methods: ["POST"], action: "deny" }, { host: "h.com", action: "deny" }] }));
    expect(connectDecision(allDeny, "h.com", 443)).toMatchObject({ kind: "deny", rule: { index: 1 } });
    const restrictedThenDefaultAllow = compilePolicy(policyOf({ default: "allow", egress: [{ host: "h.com", methods: ["POST"], action: "deny" }] }));
    expect(connectDecision(restrictedThenDefaultAllow, "h.com", 443)).toEqual({ kind: "inspect" });
  });

  it("finds the secrets bound to a host and fills their format", () => {
    const p: CompiledPolicy = compilePolicy(
      policyOf({ egress: ["*.example.com"], secrets: [{ name: "T", hosts: ["api.example.com"], header: "Authorization", format: "Bearer {}" }, { name: "K", hosts: ["*.example.com"], header: "X-Key" }] }),
    );
    expect(bindingsFor(p, "api.example.com").map((b) => b.name)).toEqual(["T", "K"]);
    expect(bindingsFor(p, "other.example.com").map((b) => b.name)).toEqual(["K"]);
    expect(bindingsFor(p, "example.com")).toEqual([]);
    expect(bindingValue(p.bindings[0]!, "s3cr$&t")).toBe("Bearer s3cr$&t");
    expect(bindingValue(p.bindings[1]!, "v")).toBe("v");
    expect(p.bindings[1]!.header).toBe("x-key");
  });

  it("matches decoded paths and refuses paths an upstream could read differently", () => {
    expect(pathForMatching("/v1/items?x=/../admin")).toBe("/v1/items");
    expect(pathForMatching("/v1/%61dmin")).toBe("/v1/admin");
    expect(pathForMatching("/")).toBe("/");
    expect(pathForMatching("/a/")).toBe("/a/");
    for (const bad of ["/v1/../admin", "/v1/%2e%2e/admin", "/v1/%2E/x", "/v1/a%2fb", "/v1//x", "/v1\\x", "/v1/%5c", "/a/%00", "/a/%zz", "relative"]) {
      expect(pathForMatching(bad), bad).toBeNull();
    }
  });
});

describe("rate limits: a token bucket per job and rule", () => {
  it("lets a minute's allowance through at once, then refuses with the seconds until the next token", () => {
    const b = new TokenBucket(120, 0);
    let ok = 0;
    let refused = 0;
    let retry = 0;
    for (let i = 0; i < 130; i++) {
      const r = b.take(0);
      if (r.ok) ok++;
      else {
        refused++;
        retry = r.retryAfterSeconds;
      }
    }
    expect([ok, refused]).toEqual([120, 10]);
    expect(retry).toBe(1); // one token every 0.5 s
    expect(b.take(499).ok).toBe(false);
    expect(b.take(501).ok).toBe(true);
    expect(b.take(501).ok).toBe(false);
    // A slow rule: one a minute means a minute's wait.
    const slow = new TokenBucket(1, 0);
    expect(slow.take(0).ok).toBe(true);
    expect(slow.take(1000)).toEqual({ ok: false, retryAfterSeconds: 59 });
    // Refills never exceed the allowance.
    const idle = new TokenBucket(2, 0);
    idle.take(0);
    idle.take(0);
    expect([idle.take(3_600_000).ok, idle.take(3_600_000).ok, idle.take(3_600_000).ok]).toEqual([true, true, false]);
  });
});
