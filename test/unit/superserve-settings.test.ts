/**
 * The superserve provider's settings through the registry (what a worker
 * parses from its environment) and its API key sources. No service is
 * contacted.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createProvider, providerSettings } from "../../providers/registry.js";
import type { SuperserveProvider } from "../../providers/superserve/index.js";

const ctx = { workerId: "w-1", stateDir: ".sandqueue", concurrency: 2 };

describe("superserve settings", () => {
  it("defaults: python template for the default image, pause off, SDK's base URL", () => {
    expect(providerSettings("superserve", { SANDQUEUE_SUPERSERVE_API_KEY: "k" }, ctx)).toEqual({
      apiKey: "k",
      templates: { host: "superserve/python-3.11" },
      createTimeoutMs: 120_000,
      createRetries: 3,
      resumeTimeoutMs: 60_000,
      pauseOnRelease: false,
      warmMax: 4,
      pausedTtlSeconds: 3600,
    });
  });

  it("names every bad variable and what it accepts, never showing the key", () => {
    const err = (() => {
      try {
        providerSettings(
          "superserve",
          {
            SANDQUEUE_SUPERSERVE_API_KEY: "ss_live_use_secret-value",
            SANDQUEUE_SUPERSERVE_TEMPLATES: "host",
            SANDQUEUE_SUPERSERVE_BASE_URL: "api.superserve.ai",
            SANDQUEUE_SUPERSERVE_PAUSE_ON_RELEASE: "yes",
          },
          ctx,
        );
      } catch (e) {
        return e as Error & { code: string };
      }
      return null;
    })();
    expect(err?.code).toBe("SANDQ_ERR_CONFIG_INVALID");
    expect(err?.message).toContain('SANDQUEUE_SUPERSERVE_TEMPLATES="host": expected comma-separated image=template pairs');
    expect(err?.message).toContain("SANDQUEUE_SUPERSERVE_BASE_URL");
    expect(err?.message).toContain("SANDQUEUE_SUPERSERVE_PAUSE_ON_RELEASE=\"yes\": expected true or false");
    expect(err?.message).not.toContain("secret-value");
  });

  it("takes the key from a secret file's first line; refuses to start without a key", async () => {
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), "sq-ss-key-")), "key");
    writeFileSync(file, "ss_live_use_from-file\nignored\n", { mode: 0o600 });
    const settings = providerSettings("superserve", { SANDQUEUE_SUPERSERVE_API_KEY_FILE: file, SANDQUEUE_SUPERSERVE_TEMPLATES: "host=t1, py=t2" }, ctx);
    const p = (await createProvider("superserve", settings, ctx)) as SuperserveProvider;
    expect(p.conn.apiKey).toBe("ss_live_use_from-file");
    expect([p.templateFor("host"), p.templateFor("py"), p.templateFor("my/template")]).toEqual(["t1", "t2", "my/template"]);
    await p.close();
    await expect(createProvider("superserve", providerSettings("superserve", {}, ctx), ctx)).rejects.toMatchObject({
      code: "SANDQ_ERR_CONFIG_INVALID",
      message: expect.stringContaining("SANDQUEUE_SUPERSERVE_API_KEY"),
    });
  });
});
