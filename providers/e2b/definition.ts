/** Registry entry of the e2b (hosted Firecracker sandboxes, through the official `e2b` SDK) provider. */
import { ConfigError, ErrorCodes } from "../../errors/index.js";
import { defineProvider } from "../definition.js";
import { createCallSettings, credentialSettings, settingTypes } from "../settings.js";
import { E2B_CAPABILITIES } from "./capabilities.js";

const apiKey = credentialSettings("SANDQUEUE_E2B_API_KEY", "API key", "X-API-Key");
const createCall = createCallSettings("SANDQUEUE_E2B");

export const e2bDefinition = defineProvider({
  name: "e2b",
  summary: "one E2B sandbox per job through the official e2b SDK: streamed exec over envd, files as tar over its file API, killed on release",
  settings: {
    apiKey: apiKey.value,
    apiKeyFile: apiKey.file,
    domain: {
      env: "SANDQUEUE_E2B_DOMAIN",
      doc: "the service's domain (unset: the SDK's, e2b.app, or E2B_DOMAIN)",
      ...settingTypes.text("a domain name"),
    },
    apiUrl: {
      env: "SANDQUEUE_E2B_API_URL",
      doc: "control-plane URL instead of https://api.<domain> (a stand-in, a self-hosted deployment)",
      ...settingTypes.url(["https", "http"]),
    },
    sandboxUrl: {
      env: "SANDQUEUE_E2B_SANDBOX_URL",
      doc: "one URL for every sandbox's envd (exec, files), the sandbox named by header, instead of https://49983-<id>.<domain>",
      ...settingTypes.url(["https", "http"]),
    },
    template: {
      env: "SANDQUEUE_E2B_TEMPLATE",
      doc: "template of jobs on the default image (host); any other image is used as a template name",
      default: () => "base",
      ...settingTypes.text("a template name or id"),
    },
    createTimeoutMs: createCall.timeoutMs,
    createRetries: createCall.retries,
    requestTimeoutMs: {
      env: "SANDQUEUE_E2B_REQUEST_TIMEOUT_MS",
      doc: "every other call to the service (list, kill, files, the start of a command)",
      default: () => "60000",
      ...settingTypes.int(1000, 3_600_000),
    },
    poolMinIdle: {
      env: "SANDQUEUE_POOL_MIN_IDLE",
      doc: "sandboxes kept created ahead per template (each is billed while it waits; 0: a create per job)",
      default: () => "0",
      ...settingTypes.int(0, 64),
    },
    poolMaxSize: {
      env: "SANDQUEUE_POOL_MAX_SIZE",
      doc: "most sandboxes the pool holds in all",
      default: () => "4",
      ...settingTypes.int(0, 256),
    },
  },
  capabilities: E2B_CAPABILITIES,
  async create(s, ctx) {
    const { readApiKey } = await import("../remote/http-client.js");
    const apiKey = await readApiKey(s.apiKey, s.apiKeyFile);
    if (!apiKey) {
      throw new ConfigError(ErrorCodes.CONFIG_INVALID, "e2b provider: set SANDQUEUE_E2B_API_KEY or SANDQUEUE_E2B_API_KEY_FILE");
    }
    const { E2bProvider } = await import("./e2b-provider.js");
    return new E2bProvider({
      apiKey,
      ...(s.domain ? { domain: s.domain } : {}),
      ...(s.apiUrl ? { apiUrl: s.apiUrl } : {}),
      ...(s.sandboxUrl ? { sandboxUrl: s.sandboxUrl } : {}),
      template: s.template ?? "base",
      owner: ctx.workerId,
      createTimeoutMs: s.createTimeoutMs ?? 120_000,
      createRetries: s.createRetries ?? 3,
      requestTimeoutMs: s.requestTimeoutMs ?? 60_000,
      pool: { minIdle: s.poolMinIdle ?? 0, maxSize: s.poolMaxSize ?? 4 },
    });
  },
});
