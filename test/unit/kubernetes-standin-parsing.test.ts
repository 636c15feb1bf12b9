/**
 * The Kubernetes stand-in's pure parsing, against the rules of
 * k8s.io/apimachinery: label selectors (where `!=` and `notin` match a
 * missing label), field selectors, resource quantities, patches.
 */
import { describe, expect, it } from "vitest";
import { matchesFields, matchesLabels, parseFieldSelector, parseLabelSelector, type Selector } from "../../standins/kubernetes/selectors.js";
import { memoryMiB, parseQuantity } from "../../standins/kubernetes/quantity.js";
import { applyPatch } from "../../standins/kubernetes/patch.js";

function sel(text: string): Selector {
  const s = parseLabelSelector(text);
  if ("error" in s) throw new Error(s.error);
  return s;
}

describe("label selectors", () => {
  const web = { app: "web", env: "prod" };
  it.each([
    ["", true],
    ["app=web", true],
    ["app==web", true],
    ["app = web , env=prod", true],
    ["app!=web", false],
    ["app!=db", true],
    ["missing!=x", true],
    ["env in (dev, prod)", true],
    ["env in (dev)", false],
    ["env notin (prod)", false],
    ["missing notin (a)", true],
    ["app", true],
    ["!app", false],
    ["!missing", true],
    ["example.com/team", false],
  ])("%j matches {app: web, env: prod}: %s", (text, expected) => {
    expect(matchesLabels(sel(text), web)).toBe(expected);
  });

  it("compares integers with > and <", () => {
    expect(matchesLabels(sel("size>3"), { size: "10" })).toBe(true);
    expect(matchesLabels(sel("size<3"), { size: "10" })).toBe(false);
    expect(matchesLabels(sel("size>3"), { size: "x" })).toBe(false);
  });

  it.each(["a in b", "a in ()", "=x", "a=b,", "a b", "-bad=x", "a=" + "v".repeat(64), "a=b=c"])("refuses %j", (text) => {
    const s = parseLabelSelector(text);
    expect("error" in s && s.error).toMatch(/^unable to parse requirement: /);
  });
});

describe("field selectors", () => {
  const supported = new Set(["metadata.name", "status.phase"]);
  it("matches = and != with escapes", () => {
    const f = parseFieldSelector("metadata.name=a\\,b,status.phase!=Failed", supported);
    if ("error" in f) throw new Error(f.error);
    expect(matchesFields(f, (k) => (k === "metadata.name" ? "a,b" : "Running"))).toBe(true);
    expect(matchesFields(f, (k) => (k === "metadata.name" ? "a,b" : "Failed"))).toBe(false);
  });
  it("names an unsupported field", () => {
    expect(parseFieldSelector("spec.foo=x", supported)).toEqual({ error: "field label not supported: spec.foo" });
  });
});

describe("quantities", () => {
  it.each([
    ["128Mi", 128 * 2 ** 20],
    ["1Gi", 2 ** 30],
    ["0.5Gi", 2 ** 29],
    ["1G", 1e9],
    ["129e6", 129e6],
    ["100m", 0.1],
    [256, 256],
  ])("%j is %d", (q, v) => {
    expect(parseQuantity(q)).toBeCloseTo(v);
  });
  it.each(["", "12 Mi", "1Mb", "abc", "1.2.3"])("refuses %j", (q) => {
    expect(parseQuantity(q)).toBeNull();
  });
  it("rounds memory up to whole MiB", () => {
    expect(memoryMiB("1G")).toBe(954);
    expect(memoryMiB("64Mi")).toBe(64);
    expect(memoryMiB("1")).toBe(1);
  });
});

describe("patches", () => {
  const pod = { metadata: { name: "p", labels: { a: "1" } }, spec: { containers: [{ name: "c", image: "x" }, { name: "d", image: "y" }] } };
  it("applies JSON Patch with ~1 escapes and test", () => {
    const out = applyPatch("application/json-patch+json", pod, [
      { op: "test", path: "/metadata/labels/a", value: "1" },
      { op: "add", path: "/metadata/labels/sandqueue.io~1job", value: "j" },
      { op: "remove", path: "/metadata/labels/a" },
    ]);
    expect(out).toMatchObject({ metadata: { labels: { "sandqueue.io/job": "j" } } });
    expect(pod.metadata.labels).toEqual({ a: "1" });
  });
  it("answers 422 for a JSON Patch that does not apply and 400 for one that does not parse", () => {
    expect(applyPatch("application/json-patch+json", pod, [{ op: "test", path: "/metadata/name", value: "q" }])).toMatchObject({ code: 422, reason: "Invalid" });
    expect(applyPatch("application/json-patch+json", pod, [{ op: "remove", path: "/nope/x" }])).toMatchObject({ code: 422 });
    expect(applyPatch("application/json-patch+json", pod, { op: "add" })).toMatchObject({ code: 400 });
  });
  it("merges: null deletes; strategic patches merge containers by name", () => {
    expect(applyPatch("application/merge-patch+json", pod, { metadata: { labels: { a: null, b: "2" } } })).toMatchObject({ metadata: { labels: { b: "2" } } });
    const s = applyPatch("application/strategic-merge-patch+json", pod, { spec: { containers: [{ name: "d", image: "z" }] } }) as typeof pod;
    expect(s.spec.containers).toEqual([{ name: "c", image: "x" }, { name: "d", image: "z" }]);
    const m = applyPatch("application/merge-patch+json", pod, { spec: { containers: [{ name: "d", image: "z" }] } }) as typeof pod;
    expect(m.spec.containers).toEqual([{ name: "d", image: "z" }]);
  });
});
