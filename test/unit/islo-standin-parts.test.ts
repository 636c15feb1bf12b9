/** The islo stand-in's request parsing: fault specs (admin endpoint) and multipart bodies. */
import { describe, expect, it } from "vitest";
import { parseFault } from "../../standins/islo/faults.js";
import { multipartField } from "../../standins/islo/multipart.js";

describe("islo stand-in fault specs", () => {
  it("accepts each action and names the field at fault", () => {
    expect(parseFault({ match: { op: "exec-result" }, action: { type: "fail", code: 503 }, count: 5 })).toEqual({
      match: { op: "exec-result" },
      action: { type: "fail", code: 503 },
      count: 5,
    });
    expect(parseFault({ action: { type: "drop" } })).toMatchObject({ action: { type: "drop" }, count: 1 });
    expect(parseFault({ action: { type: "vanish", afterMs: 10 } })).toMatchObject({ action: { type: "vanish", afterMs: 10 } });
    expect(parseFault({ match: { op: "nope" }, action: { type: "drop" } })).toMatch(/^match\.op: expected one of auth, list/);
    expect(parseFault({ action: { type: "fail", code: 418 } })).toMatch(/^action\.code: expected one of/);
    expect(parseFault({ action: { type: "fail", code: 429, retryAfterSeconds: -1 } })).toBe("action.retryAfterSeconds: expected an integer >= 0");
    expect(parseFault({ action: { type: "delay" } })).toBe("action.ms: expected an integer >= 0");
    expect(parseFault({ action: { type: "explode" } })).toBe("action.type: expected fail, delay, vanish or drop");
    expect(parseFault({ action: { type: "drop" }, count: 0 })).toBe("count: expected an integer >= 1");
    expect(parseFault(null)).toMatch(/a fault is an object/);
  });
});

describe("islo stand-in multipart", () => {
  it("finds the named part's exact bytes, as fetch's FormData sends them", async () => {
    const bytes = Buffer.from([0, 1, 2, 13, 10, 45, 45, 255]);
    const form = new FormData();
    form.append("other", "x");
    form.append("file", new Blob([bytes], { type: "application/gzip" }), "archive.tar.gz");
    const req = new Request("http://x/", { method: "POST", body: form });
    const body = Buffer.from(await req.arrayBuffer());
    const got = multipartField(req.headers.get("content-type") ?? undefined, body, "file");
    expect(Buffer.isBuffer(got) && got.equals(bytes)).toBe(true);
    expect(multipartField(req.headers.get("content-type") ?? undefined, body, "missing")).toBe('expected a form field named "missing"');
    expect(multipartField("application/json", body, "file")).toMatch(/multipart\/form-data/);
  });
});
