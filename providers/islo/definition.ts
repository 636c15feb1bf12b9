/** Registry entry of the islo provider (islo's REST API: control + compute planes). */
import { defineProvider } from "../definition.js";
import { settingTypes } from "../settings.js";
import { isloCapabilities } from "./capabilities.js";

export const isloDefinition = defineProvider({
  name: "islo",
  summary: "one islo sandbox VM per job through islo's REST API (exec polled, files-archive workspaces)",
  settings: {
    baseUrl: {
      env: "SANDQUEUE_ISLO_BASE_URL",
      doc: "islo's control plane (API key exchange, gateway profiles)",
      default: () => "https://api.islo.dev",
      ...settingTypes.url(["https", "http"]),
    },
    computeUrl: {
      env: "SANDQUEUE_ISLO_COMPUTE_URL",
      doc: "islo's compute plane (sandboxes, exec, files)",
      default: () => "https://ca.compute.islo.dev",
      ...settingTypes.url(["https", "http"]),
    },
    apiKey: {
      env: "SANDQUEUE_ISLO_API_KEY",
      doc: "islo API key (or SANDQUEUE_ISLO_API_KEY_FILE)",
      accepts: "an islo API key",
      schema: settingTypes.path().schema,
      secret: true,
    },
    apiKeyFile: {
      env: "SANDQUEUE_ISLO_API_KEY_FILE",
      doc: "file whose first line is the islo API key",
      ...settingTypes.path(),
    },
    timeoutMs: {
      env: "SANDQUEUE_ISLO_TIMEOUT_MS",
      doc: "per HTTP attempt",
      default: () => "30000",
      ...settingTypes.int(100, 600_000),
    },
    retries: {
      env: "SANDQUEUE_ISLO_RETRIES",
      doc: "further attempts after a 5xx or timeout (islo's client tolerates 5 while polling)",
      default: () => "5",
      ...settingTypes.int(0, 20),
    },
    pollMs: {
      env: "SANDQUEUE_ISLO_POLL_MS",
      doc: "longest interval between exec result polls (first poll after 10 ms, doubling)",
      default: () => "500",
      ...settingTypes.int(10, 10_000),
    },
    readyTimeoutMs: {
      env: "SANDQUEUE_ISLO_READY_TIMEOUT_MS",
      doc: "longest wait for a created or resumed sandbox to be running",
      default: () => "120000",
      ...settingTypes.int(1000, 3_600_000),
    },
    images: {
      env: "SANDQUEUE_ISLO_IMAGES",
      doc: "job image name → islo image, e.g. host=python:3.12; unmapped names are sent as they are",
      ...settingTypes.pairs("name=image"),
    },
    gatewayProfile: {
      env: "SANDQUEUE_ISLO_GATEWAY_PROFILE",
      doc: "gateway profile (name or id) for sandboxes; used, never changed",
      accepts: "a gateway profile name or id",
      schema: settingTypes.path().schema,
    },
    vcpus: {
      env: "SANDQUEUE_ISLO_VCPUS",
      doc: "vCPUs per sandbox (islo's default when unset)",
      ...settingTypes.int(1, 64),
    },
    diskGb: {
      env: "SANDQUEUE_ISLO_DISK_GB",
      doc: "disk per sandbox, GB (islo's default when unset)",
      ...settingTypes.int(1, 1024),
    },
  },
  capabilities: isloCapabilities,
  async create(s, ctx) {
    const { readApiKey } = await import("../remote/http-client.js");
    const { ConfigError, ErrorCodes } = await import("../../errors/index.js");
    const apiKey = await readApiKey(s.apiKey, s.apiKeyFile);
    if (!apiKey) throw new ConfigError(ErrorCodes.CONFIG_INVALID, "islo provider: set SANDQUEUE_ISLO_API_KEY or SANDQUEUE_ISLO_API_KEY_FILE");
    const { IsloProvider } = await import("./islo-provider.js");
    return new IsloProvider({
      controlUrl: s.baseUrl ?? "https://api.islo.dev",
      computeUrl: s.computeUrl ?? "https://ca.compute.islo.dev",
      apiKey,
      owner: ctx.workerId,
      timeoutMs: s.timeoutMs ?? 30_000,
      retries: s.retries ?? 5,
      pollMs: s.pollMs ?? 500,
      readyTimeoutMs: s.readyTimeoutMs ?? 120_000,
      images: s.images ?? {},
      ...(s.gatewayProfile ? { gatewayProfile: s.gatewayProfile } : {}),
      ...(s.vcpus ? { vcpus: s.vcpus } : {}),
      ...(s.diskGb ? { diskGb: s.diskGb } : {}),
    });
  },
});
