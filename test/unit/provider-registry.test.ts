import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ErrorCodes, SandqueueError } from "../../errors/index.js";
import { parseJobSpec } from "../../producer/job-spec.js";
import { labelSafe, ownershipLabels, type ProviderCapabilities } from "../../providers/provider.js";
import { PROVIDERS, providerDefinition } from "../../providers/registry.js";
import { providerTablesMarkdown } from "../../cli/providers-command.js";
import { checkCapabilities } from "../../worker/capabilities.js";
import { parseWorkerConfig } from "../../worker/config.js";

const ROOT = path.resolve(import.meta.dirname, "../..");

function thrown(fn: () => unknown): SandqueueError {
  try {
    fn();
  } catch (err) {
    return err as SandqueueError;
  }
  throw new Error("expected a throw");
}

describe("provider registry", () => {
  it("the README's provider tables are what `sandqueue providers --markdown` prints", () => {
    const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
    const between = /<!-- providers:begin -->\n([\s\S]*?)<!-- providers:end -->/.exec(readme)?.[1];
    expect(between, "README lacks the providers:begin/end block").toBeDefined();
    expect(between).toBe(providerTablesMarkdown());
    // And the command itself prints the same (built CLI).
    const printed = execFileSync("node", [path.join(ROOT, "bin/sandqueue.js"), "providers", "--markdown"], { encoding: "utf8" });
    expect(printed).toBe(between);
  });

  it("every provider's settings name a variable, what it accepts and a line of doc", () => {
    for (const p of PROVIDERS) {
      expect(p.name).toMatch(/^[a-z][a-z0-9-]*$/);
      for (const s of Object.values(p.settings)) {
        expect(s.env).toMatch(/^[A-Z][A-Z0-9_]*$/);
        expect(s.accepts.length).toBeGreaterThan(3);
        expect(s.doc.length).toBeGreaterThan(3);
      }
    }
  });

  it("worker/ and cli/ import no provider's own code: a new provider is a folder plus a registry entry", () => {
    const offenders: string[] = [];
    for (const dir of ["worker", "cli"]) {
      for (const f of readdirSync(path.join(ROOT, dir), { recursive: true }) as string[]) {
        if (!f.endsWith(".ts")) continue;
        const src = readFileSync(path.join(ROOT, dir, f), "utf8");
        for (const p of PROVIDERS) {
          // The image tool imports built images into a container engine: an engine client, not a provider.
          const imports = [...src.matchAll(new RegExp(`from "\\.\\./providers/${p.name}/([^"]+)"`, "g"))].map((m) => m[1]);
          if (imports.some((i) => i !== "engine-client.js")) offenders.push(`${dir}/${f} imports providers/${p.name}`);
        }
        if (/provider === "(local|docker)"|case "(local|docker)"/.test(src)) offenders.push(`${dir}/${f} branches on a provider name`);
      }
    }
    expect(offenders).toEqual([]);
  });

  it("an unknown provider is refused naming the choices; a bad provider setting names its variable", () => {
    const e = thrown(() => parseWorkerConfig({ SANDQUEUE_PROVIDER: "nope" }));
    expect(e.code).toBe(ErrorCodes.CONFIG_INVALID);
    expect(e.message).toContain("SANDQUEUE_PROVIDER=\"nope\": expected one of local, docker");
    const f = thrown(() => parseWorkerConfig({}, { provider: "nope" }));
    expect(f.message).toContain("--provider=\"nope\"");
    const g = thrown(() => parseWorkerConfig({ SANDQUEUE_PROVIDER: "docker", DOCKER_HOST: "http://x", SANDQUEUE_POOL_MAX_SIZE: "-1" }));
    expect(g.message).toContain("DOCKER_HOST=\"http://x\": expected a URL (unix:// or tcp://)");
    expect(g.message).toContain("SANDQUEUE_POOL_MAX_SIZE=\"-1\": expected an integer from 0 to 256");
  });

  it("parses each provider's own settings with their defaults; overrides win", () => {
    const local = parseWorkerConfig({ SANDQUEUE_CONCURRENCY: "3" });
    expect(local.provider).toBe("local");
    expect(local.providerSettings).toMatchObject({ prestart: 3, workRoot: expect.stringMatching(/\.sandqueue\/work$/) });
    const docker = parseWorkerConfig({ SANDQUEUE_PROVIDER: "docker", DOCKER_HOST: "tcp://engine:2375" }, {}, { providerSettings: { poolMaxSize: 1 } });
    expect(docker.providerSettings).toEqual({ dockerHost: "tcp://engine:2375", poolMinIdle: 2, poolMaxSize: 1 });
    expect(providerDefinition("docker").name).toBe("docker");
  });

  it("worker ids are new at every start and become label-safe ownership labels", () => {
    const a = parseWorkerConfig({}).workerId;
    const b = parseWorkerConfig({}).workerId;
    expect(a).not.toBe(b);
    expect(parseWorkerConfig({ SANDQUEUE_WORKER_ID: "pod-7" }).workerId).toBe("pod-7");
    const labels = ownershipLabels(a, "job:1");
    expect(labels["app.kubernetes.io/managed-by"]).toBe("sandqueue");
    for (const v of Object.values(labels)) expect(v).toMatch(/^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/);
    // Long or unsafe values stay distinct after shortening.
    const long = "x".repeat(80);
    expect(labelSafe(long)).toHaveLength(63);
    expect(labelSafe(long)).not.toBe(labelSafe(`${long}y`));
    expect(labelSafe("ok-id_1.2")).toBe("ok-id_1.2");
  });
});

describe("capabilities", () => {
  const all: ProviderCapabilities = {
    memoryLimit: true, pidsLimit: true, limitEvents: true, stdin: true, separateStderr: true,
    byteExactOutput: true, networkIsolation: true, networkPolicy: false, hostWorkspace: false,
  };
  it("a job that asks for a limit its provider cannot enforce is refused, naming the field and the capability", () => {
    const spec = parseJobSpec({ kind: "shell", script: "true", limits: { memoryMb: 64, pids: 8 } });
    const e = thrown(() => checkCapabilities(spec, { ...all, memoryLimit: false, pidsLimit: false }, "remote"));
    expect(e.code).toBe(ErrorCodes.CAPABILITY_UNSUPPORTED);
    expect(e.retryable).toBe(false);
    expect(e.message).toContain("limits.memoryMb: the remote provider cannot enforce it (capability memoryLimit)");
    expect(e.message).toContain("limits.pids: the remote provider cannot enforce it (capability pidsLimit)");
  });
  it("defaults do not count as asking: a job without limits runs on such a provider", () => {
    const spec = parseJobSpec({ kind: "shell", script: "true" });
    expect(() => checkCapabilities(spec, { ...all, memoryLimit: false, pidsLimit: false }, "remote")).not.toThrow();
    expect(() => checkCapabilities(spec, all, "local")).not.toThrow();
  });
  it("a provider that cannot cut the network runs no job (every job's network is \"none\")", () => {
    const spec = parseJobSpec({ kind: "shell", script: "true" });
    expect(thrown(() => checkCapabilities(spec, { ...all, networkIsolation: false }, "open")).message).toContain("network: the open provider cannot enforce it");
  });
});
