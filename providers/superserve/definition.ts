/** Registry entry of the superserve (hosted Firecracker microVMs, through @superserve/sdk) provider. */
import { ConfigError, ErrorCodes } from "../../errors/index.js";
import { defineProvider } from "../definition.js";
import { createCallSettings, credentialSettings, settingTypes } from "../settings.js";
import { SUPERSERVE_CAPABILITIES } from "./capabilities.js";

const apiKey = credentialSettings("SANDQUEUE_SUPERSERVE_API_KEY", "API key", "X-API-Key");
const createCall = createCallSettings("SANDQUEUE_SUPERSERVE");

export const superserveDefinition = defineProvider({
  name: "superserve",
  summary: "one Superserve sandbox (Firecracker microVM) per job through @superserve/sdk: streamed exec, files as tar over its file API, pause for reuse",
  settings: {
    apiKey: apiKey.value,
    apiKeyFile: apiKey.file,
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
      ...settingTypes.pairs("image=template"),
    },
    createTimeoutMs: createCall.timeoutMs,
    createRetries: createCall.retries,
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
