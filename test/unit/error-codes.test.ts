import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ErrorCodes, SandqueueError, SpecError, toSandqueueError } from "../../errors/index.js";

describe("error codes", () => {
  it("every code is documented in docs/ERRORS.md", () => {
    const doc = readFileSync(new URL("../../docs/ERRORS.md", import.meta.url), "utf8");
    const missing = Object.values(ErrorCodes).filter((code) => !doc.includes(`\`${code}\``));
    expect(missing).toEqual([]);
  });
  it("codes are unique and prefixed", () => {
    const codes = Object.values(ErrorCodes);
    expect(new Set(codes).size).toBe(codes.length);
    for (const c of codes) expect(c).toMatch(/^SANDQ_ERR_[A-Z_]+$/);
  });
  it("keeps code, retryable and cause; wraps foreign errors as retryable INTERNAL", () => {
    const cause = new Error("boom");
    const e = new SpecError(ErrorCodes.SPEC_INVALID, "bad", { cause });
    expect(e).toBeInstanceOf(SandqueueError);
    expect(e.name).toBe("SpecError");
    expect(e.retryable).toBe(false);
    expect(e.cause).toBe(cause);
    const w = toSandqueueError(new TypeError("x"));
    expect(w.code).toBe(ErrorCodes.INTERNAL);
    expect(w.retryable).toBe(true);
    expect(toSandqueueError(e)).toBe(e);
  });
});
