/** Registry entry of the superserve (hosted Firecracker microVMs, through @superserve/sdk) provider. */
import { z } from "zod";
import { ConfigError, ErrorCodes } from "../../errors/index.js";
import { defineProvider } from "../definition.js";
import { settingTypes } from "../settings.js";
import { SUPERSERVE_CAPABILITIES } from "./capabilities.js";

const PAIRS_ACCEPTS = "comma-separated image=template pairs";

const templatePairs = z.string().transform((s, ctx) => {
  const out: Record<string, string> = {};
  for (const part of s.split(",").map((p) => p.trim()).filter(Boolean)) {
    const i = part.indexOf("=");
    const key = i > 0 ? part.slice(0, i).trim() : "";
    const value = part.slice(i + 1).trim();
    if (!/^[A-Za-z0-9._:@/-]+$/.test(key) || !value) {
      ctx.addIssue({ code: "custom", message: `expected ${PAIRS_ACCEPTS}; ${JSON.stringify(part)} is not one` });
      return z.NEVER;
    }
    out[key] = value;
  }
  return out;
});

export const superserveDefinition = defineProvider({
  name: "superserve",
  summary: "one Superserve sandbox (Firecracker microVM) per job through @superserve/sdk: streamed exec, files as tar over its file API, pause for reuse",
  settings: {
    apiKey: {
      env: "SANDQUEUE_SUPERSERVE_API_KEY",
      doc: "API key (X-API-Key); or SANDQUEUE_SUPERSERVE_API_KEY_FILE",
      ...settingTypes.text("an API key"),
      secret: true,
    },
    apiKeyFile: {
      env: "SANDQUEUE_SUPERSERVE_API_KEY_FILE",
      doc: "file whose first line is the API key (when SANDQUEUE_SUPERSERVE_API_KEY is unset)",
      ...settingTypes.path(),
    },
    baseUrl: {
      env: "SANDQUEUE_SUPERSERVE_BASE_URL",
      doc: "control-plane URL (unset: the SDK's, by the key's region)",
      ...settingTypes.url(["https", "http"]),
    },
    dataPlaneUrl: {
      env: "SANDQUEUE_SUPERSERVE_DATA_PLANE_URL",
      doc: "where the SDK's data-plane host (exec, files) is reached instead; needed with a base URL the SDK does not know",
      ...settingTypes.url(["https", "http"]),
    },
    templates: {
      env: "SANDQUEUE_SUPERSERVE_TEMPLATES",
      doc: "job image → template; unmapped images are used as template names",
      default: () => "host=superserve/python-3.11",
      accepts: PAIRS_ACCEPTS,
      schema: templatePairs,
    },
    createTimeoutMs: {
      env: "SANDQUEUE_SUPERSERVE_CREATE_TIMEOUT_MS",
      doc: "how long one create call may take",
      default: () => "120000",
      ...settingTypes.int(1000, 3_600_000),
    },
    createRetries: {
      env: "SANDQUEUE_SUPERSERVE_CREATE_RETRIES",
      doc: "further create attempts after a 429/5xx/timeout (a lost create is found by its token first)",
      default: () => "3",
      ...settingTypes.int(0, 10),
    },
    resumeTimeoutMs: {
      env: "SANDQUEUE_SUPERSERVE_RESUME_TIMEOUT_MS",
      doc: "how long a reattached sandbox may take to become active",
      default: () => "60000",
      ...settingTypes.int(1000, 3_600_000),
    },
    pauseOnRelease: {
      env: "SANDQUEUE_SUPERSERVE_PAUSE_ON_RELEASE",
      doc: "warm reuse: a released sandbox is cleaned and paused, and the next job of its template resumes it",
      default: () => "false",
      ...settingTypes.bool(),
    },
    warmMax: {
      env: "SANDQUEUE_SUPERSERVE_WARM_MAX",
      doc: "most paused sandboxes kept per template (warm reuse)",
      default: () => "4",
      ...settingTypes.int(0, 256),
    },
    pausedTtlSeconds: {
      env: "SANDQUEUE_SUPERSERVE_PAUSED_TTL_S",
      doc: "the service deletes a sandbox paused this long (auto_delete_seconds)",
      default: () => "3600",
      ...settingTypes.int(60, 30 * 86_400),
    },
  },
  capabilities: SUPERSERVE_CAPABILITIES,
  async create(s, ctx) {
    const { readApiKey } = await import("../remote/http-client.js");
    const apiKey = await readApiKey(s.apiKey, s.apiKeyFile);
    if (!apiKey) {
      throw new ConfigError(ErrorCodes.CONFIG_INVALID, "superserve provider: set SANDQUEUE_SUPERSERVE_API_KEY or SANDQUEUE_SUPERSERVE_API_KEY_FILE");
    }
    const { SuperserveProvider } = await import("./superserve-provider.js");
    return new SuperserveProvider({
      apiKey,
      ...(s.baseUrl ? { baseUrl: s.baseUrl } : {}),
      ...(s.dataPlaneUrl ? { dataPlaneUrl: s.dataPlaneUrl } : {}),
      templates: s.templates ?? { host: "superserve/python-3.11" },
      owner: ctx.workerId,
      createTimeoutMs: s.createTimeoutMs ?? 120_000,
      createRetries: s.createRetries ?? 3,
      resumeTimeoutMs: s.resumeTimeoutMs ?? 60_000,
      pauseOnRelease: s.pauseOnRelease ?? false,
      warmMax: s.warmMax ?? 4,
      pausedTtlSeconds: s.pausedTtlSeconds ?? 3600,
    });
  },
});
