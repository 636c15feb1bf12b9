import { describe, expect, it } from "vitest";
import { addressProblem, classifyAddress } from "../../api/address-policy.js";
import { parseRate } from "../../api/api-keys.js";
import { guardedLookup, parseCallbackUrl } from "../../api/callback-target.js";
import { problemFor, statusFor } from "../../api/problem.js";
import { statusLabel } from "../../api/queue-ui.js";
import { deriveWebhookKey, formatWebhookSecret, parseWebhookSecret, sign, signedHeaders, verify } from "../../api/webhook-signature.js";
import { ApiError, ErrorCodes, SpecError } from "../../errors/index.js";

describe("callback address policy", () => {
  it.each([
    ["127.0.0.1", "loopback"],
    ["127.255.0.9", "loopback"],
    ["::1", "loopback"],
    ["::ffff:127.0.0.1", "loopback"],
    ["::ffff:7f00:1", "loopback"],
    ["10.1.2.3", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.255", "private"],
    ["192.168.1.1", "private"],
    ["100.64.0.1", "private"],
    ["fd12:3456::1", "private"],
    ["64:ff9b::10.0.0.1", "private"],
    ["2002:c0a8:0101::1", "private"],
    ["169.254.169.254", "link-local"],
    ["fe80::1%eth0", "link-local"],
    ["0.0.0.0", "special"],
    ["::", "special"],
    ["224.0.0.1", "special"],
    ["255.255.255.255", "special"],
    ["ff02::1", "special"],
    ["172.32.0.1", "public"],
    ["8.8.8.8", "public"],
    ["2606:4700::1111", "public"],
    ["::ffff:8.8.8.8", "public"],
  ])("%s is %s", (address, kind) => {
    expect(classifyAddress(address)).toBe(kind);
  });

  it("refuses what the operator has not allowed, and special addresses always", () => {
    expect(addressProblem("127.0.0.1", [])).toMatch(/loopback address/);
    expect(addressProblem("127.0.0.1", ["loopback"])).toBeNull();
    expect(addressProblem("10.0.0.1", ["loopback"])).toMatch(/private address .*allows loopback/);
    expect(addressProblem("0.0.0.0", ["loopback", "private", "link-local"])).toMatch(/not a routable/);
    expect(addressProblem("93.184.216.34", [])).toBeNull();
  });

  it("refuses non-http schemes and credentials in the URL", () => {
    expect(() => parseCallbackUrl("file:///etc/passwd")).toThrow(/expected http: or https:/);
    expect(() => parseCallbackUrl("http://user:pw@example.com/")).toThrow(/credentials/);
    expect(parseCallbackUrl("https://example.com/hook").host).toBe("example.com");
  });

  it("fails the connection's own lookup when a name resolves to a refused address", async () => {
    const lookup = guardedLookup([]);
    const err = await new Promise<NodeJS.ErrnoException | null>((resolve) => lookup("localhost", {}, (e) => resolve(e)));
    expect(err?.code).toBe("ECALLBACKREFUSED");
    expect(err?.message).toMatch(/localhost resolves to .*loopback/);
    const ok = await new Promise<string>((resolve, reject) => guardedLookup(["loopback"])("localhost", {}, (e, a) => (e ? reject(e) : resolve(a as string))));
    expect(classifyAddress(ok)).toBe("loopback");
  });
});

describe("Standard Webhooks signatures", () => {
  it("matches the scheme's published test vector", () => {
    const key = parseWebhookSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    expect(sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')).toBe("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
  });

  it("verifies its own headers, refuses a changed body, another key and an old timestamp", () => {
    const key = deriveWebhookKey("m".repeat(32), "abc123", 1);
    const h = signedHeaders(key, "msg_1", '{"a":1}', 1_700_000_000);
    expect(verify(key, { ...h }, '{"a":1}', 300, 1_700_000_010)).toBe(true);
    expect(verify(key, { ...h }, '{"a":2}', 300, 1_700_000_010)).toBe(false);
    expect(verify(deriveWebhookKey("m".repeat(32), "abc123", 2), { ...h }, '{"a":1}', 300, 1_700_000_010)).toBe(false);
    expect(verify(key, { ...h }, '{"a":1}', 300, 1_700_000_400)).toBe(false);
    // Several signatures (secret rotation): one match is enough.
    expect(verify(key, { ...h, "webhook-signature": `v1,AAAA ${h["webhook-signature"]}` }, '{"a":1}', 300, 1_700_000_010)).toBe(true);
  });

  it("derives a different secret per key and per version, printed as whsec_", () => {
    const a = formatWebhookSecret(deriveWebhookKey("m".repeat(32), "k1", 1));
    expect(a).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    expect(formatWebhookSecret(deriveWebhookKey("m".repeat(32), "k2", 1))).not.toBe(a);
    expect(formatWebhookSecret(deriveWebhookKey("m".repeat(32), "k1", 2))).not.toBe(a);
  });
});

describe("API pieces", () => {
  it("parses rates", () => {
    expect(parseRate("50/s")).toEqual({ perSec: 50, burst: 50 });
    expect(parseRate("600/m")).toEqual({ perSec: 10, burst: 600 });
    expect(parseRate("5")).toEqual({ perSec: 5, burst: 5 });
    expect(parseRate("0/s")).toBeNull();
    expect(parseRate("fast")).toBeNull();
  });

  it("maps codes to HTTP statuses and problem details with field paths", () => {
    expect(statusFor(ErrorCodes.SPEC_INVALID)).toBe(422);
    expect(statusFor(ErrorCodes.RATE_LIMITED)).toBe(429);
    expect(statusFor(ErrorCodes.UNAUTHORIZED)).toBe(401);
    expect(statusFor(ErrorCodes.INTERNAL)).toBe(500);
    const p = problemFor(new SpecError(ErrorCodes.SPEC_INVALID, "bad", { details: { issues: [{ path: "limits.timeoutMs", message: "x" }] } }), "/v1/jobs");
    expect(p).toMatchObject({ status: 422, code: "SANDQ_ERR_SPEC_INVALID", type: "urn:sandqueue:error:SANDQ_ERR_SPEC_INVALID", errors: [{ path: "limits.timeoutMs" }], instance: "/v1/jobs" });
    expect(problemFor(new ApiError(ErrorCodes.RATE_LIMITED, "slow down")).retryable).toBe(true);
  });

  it("labels queue UI jobs by their sandqueue status", () => {
    const base = { data: { spec: { kind: "shell", submittedBy: "svc" } }, finishedOn: 1 };
    const result = (over: object) => ({ id: "j", status: "succeeded", exitCode: 0, signal: null, stdout: "", stderr: "", stdoutTruncated: false, stderrTruncated: false, reason: null, timings: { queuedMs: 0, acquireMs: 0, execMs: 0, totalMs: 0 }, provider: "local", image: "host", worker: "w", attempts: 1, error: null, ...over });
    expect(statusLabel({ ...base, returnvalue: result({}) })).toBe("✓ succeeded · shell · by svc");
    expect(statusLabel({ ...base, returnvalue: JSON.stringify(result({ status: "failed", exitCode: 3 })) })).toBe("✗ failed (exit 3) · shell · by svc");
    expect(statusLabel({ ...base, returnvalue: result({ status: "killed", reason: "memory" }) })).toBe("✗ killed/memory · shell · by svc");
    expect(statusLabel({ ...base, returnvalue: result({ status: "error", error: { code: "SANDQ_ERR_IMAGE_NOT_FOUND", message: "" } }) })).toBe("✗ error/SANDQ_ERR_IMAGE_NOT_FOUND · shell · by svc");
    expect(statusLabel({ ...base, returnvalue: null, failedReason: "stalled" })).toBe("✗ error/SANDQ_ERR_WORKER_LOST · shell · by svc");
    expect(statusLabel({ data: base.data, finishedOn: null })).toBe("shell · by svc");
  });
});
