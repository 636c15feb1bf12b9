/**
 * The kubernetes provider's settings from the environment: defaults, the
 * pair and JSON forms, and bad values refused naming the variable and what
 * it accepts. Also the NetworkPolicy test the provider starts with.
 */
import { describe, expect, it } from "vitest";
import { parseSettings } from "../../providers/settings.js";
import { kubernetesDefinition } from "../../providers/kubernetes/definition.js";
import { isDefaultDeny } from "../../providers/kubernetes/index.js";

const ctx = { workerId: "w", stateDir: "/tmp/x", concurrency: 2 };
const parse = (env: Record<string, string>) => parseSettings("kubernetes", kubernetesDefinition.settings, env, ctx);

describe("kubernetes provider settings", () => {
  it("defaults, image mapping, node selector, tolerations", () => {
    expect(parse({})).toMatchObject({ namespace: "sandqueue-sandboxes", workspaceSizeMb: 256, tmpSizeMb: 64, runAsUser: 65534, poolMinIdle: 2, poolMaxSize: 4 });
    const s = parse({
      SANDQUEUE_K8S_IMAGES: "host=python:3.12-slim, node=registry.example.com/team/node:20@sha256:abc",
      SANDQUEUE_K8S_NODE_SELECTOR: "pool=sandboxes,kubernetes.io/arch=amd64",
      SANDQUEUE_K8S_TOLERATIONS: '[{"key":"sandbox","operator":"Exists","effect":"NoSchedule"}]',
      SANDQUEUE_K8S_CPU: "500m",
    });
    expect(s.images).toEqual({ host: "python:3.12-slim", node: "registry.example.com/team/node:20@sha256:abc" });
    expect(s.nodeSelector).toEqual({ pool: "sandboxes", "kubernetes.io/arch": "amd64" });
    expect(s.tolerations).toEqual([{ key: "sandbox", operator: "Exists", effect: "NoSchedule" }]);
    expect(s.cpu).toBe("500m");
  });

  it("refuses bad values, each naming its variable and what it accepts", () => {
    const bad = {
      SANDQUEUE_K8S_NAMESPACE: "Not_A_Label",
      SANDQUEUE_K8S_IMAGES: "host",
      SANDQUEUE_K8S_TOLERATIONS: '[{"operator":"Maybe"}]',
      SANDQUEUE_K8S_CPU: "lots",
      SANDQUEUE_K8S_RUN_AS_USER: "0",
    };
    let message = "";
    try {
      parse(bad);
    } catch (err) {
      expect(err).toMatchObject({ code: "SANDQ_ERR_CONFIG_INVALID" });
      message = (err as Error).message;
    }
    expect(message).toContain('SANDQUEUE_K8S_NAMESPACE="Not_A_Label": expected a namespace name (DNS label)');
    expect(message).toMatch(/SANDQUEUE_K8S_IMAGES="host": expected comma-separated name=image pairs/);
    expect(message).toMatch(/SANDQUEUE_K8S_TOLERATIONS=.*expected a JSON array of tolerations.*\[0\]\.operator/);
    expect(message).toContain('SANDQUEUE_K8S_CPU="lots": expected a CPU quantity');
    expect(message).toContain('SANDQUEUE_K8S_RUN_AS_USER="0": expected an integer from 1');
    expect(() => parse({ SANDQUEUE_K8S_TOLERATIONS: "{not json" })).toThrow(/SANDQUEUE_K8S_TOLERATIONS=.*not JSON/);
  });

  it("a default-deny policy selects the sandbox pods and allows nothing either way", () => {
    const pods = { "app.kubernetes.io/managed-by": "sandqueue" };
    const policy = (spec: object) => ({ spec: { podSelector: {}, policyTypes: ["Ingress", "Egress"], ...spec } });
    expect(isDefaultDeny(policy({}), pods)).toBe(true);
    expect(isDefaultDeny(policy({ podSelector: { matchLabels: pods } }), pods)).toBe(true);
    expect(isDefaultDeny(policy({ podSelector: { matchLabels: { app: "other" } } }), pods)).toBe(false);
    expect(isDefaultDeny(policy({ podSelector: { matchExpressions: [{ key: "x", operator: "Exists" }] } }), pods)).toBe(false);
    expect(isDefaultDeny(policy({ policyTypes: ["Ingress"] }), pods)).toBe(false);
    expect(isDefaultDeny(policy({ egress: [{}] }), pods)).toBe(false);
    expect(isDefaultDeny(policy({ ingress: [{ from: [{ podSelector: {} }] }] }), pods)).toBe(false);
  });
});
