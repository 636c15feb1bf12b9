/** Registry entry of the provisioner (deer-flow sandbox provisioner + AIO sandbox) provider. */
import { z } from "zod";
import { defineProvider } from "../definition.js";
import { shimCapabilities } from "../remote/shim-capabilities.js";
import { requestSettings, settingTypes } from "../settings.js";

const requests = requestSettings("SANDQUEUE_PROVISIONER", "create, get, list, delete, files", "bash/exec");

export const provisionerDefinition = defineProvider({
  name: "provisioner",
  summary: "one all-in-one sandbox pod per job through deer-flow's sandbox provisioner (/api/sandboxes) and the sandbox's own HTTP API",
  settings: {
    url: {
      env: "SANDQUEUE_PROVISIONER_URL",
      doc: "the provisioner service",
      default: () => "http://127.0.0.1:8002",
      ...settingTypes.url(["http", "https"]),
    },
    apiKey: { env: "SANDQUEUE_PROVISIONER_API_KEY", doc: "the provisioner's API key (X-API-Key); or set SANDQUEUE_PROVISIONER_API_KEY_FILE", secret: true, ...settingTypes.text("an API key") },
    apiKeyFile: { env: "SANDQUEUE_PROVISIONER_API_KEY_FILE", doc: "file holding the provisioner's API key (first line)", ...settingTypes.path() },
    sandboxApiKey: { env: "SANDQUEUE_AIO_API_KEY", doc: "the sandboxes' own API key (X-AIO-API-Key), when they ask for one", secret: true, ...settingTypes.text("an API key") },
    images: {
      env: "SANDQUEUE_PROVISIONER_IMAGES",
      doc: "job images served by the provisioner's one SANDBOX_IMAGE (comma-separated); others are refused",
      default: () => "all-in-one-sandbox",
      accepts: "image names, comma-separated",
      schema: z
        .string()
        .regex(/^[^,\s]+(,[^,\s]+)*$/, { error: "expected image names, comma-separated" })
        .transform((s) => s.split(",")),
    },
    requestTimeoutMs: requests.timeoutMs,
    retries: requests.retries,
    readyTimeoutMs: {
      env: "SANDQUEUE_PROVISIONER_READY_TIMEOUT_MS",
      doc: "how long a new sandbox may take to answer GET /v1/sandbox before the attempt fails as retryable",
      default: () => "120000",
      ...settingTypes.int(1000, 3_600_000),
    },
    pollMs: {
      env: "SANDQUEUE_PROVISIONER_POLL_MS",
      doc: "readiness poll interval, ms",
      default: () => "250",
      ...settingTypes.int(10, 60_000),
    },
  },
  // The pod's limits are the provisioner's (1 CPU, 1 GiB in app.py), not the job's. bash/exec returns
  // text and AIO pods have the cluster's network: the shim (as root, or in a user namespace) makes up for both.
  capabilities: shimCapabilities(false),
  async create(s, ctx) {
    const { ProvisionerProvider } = await import("./provisioner-provider.js");
    const { readApiKey } = await import("../remote/http-client.js");
    return new ProvisionerProvider({
      url: s.url ?? "http://127.0.0.1:8002",
      apiKey: await readApiKey(s.apiKey, s.apiKeyFile),
      sandboxApiKey: s.sandboxApiKey,
      images: s.images ?? ["all-in-one-sandbox"],
      requestTimeoutMs: s.requestTimeoutMs ?? 60_000,
      retries: s.retries ?? 4,
      readyTimeoutMs: s.readyTimeoutMs ?? 120_000,
      pollMs: s.pollMs ?? 250,
      owner: ctx.workerId,
    });
  },
});
