/** Registry entry of the microsandbox (msbserver JSON-RPC) provider. */
import { z } from "zod";
import { defineProvider } from "../definition.js";
import { shimCapabilities } from "../remote/shim-capabilities.js";
import { requestSettings, settingTypes } from "../settings.js";

const requests = requestSettings("SANDQUEUE_MSB", "start, stop, list", "command.run");

export const microsandboxDefinition = defineProvider({
  name: "microsandbox",
  summary: "one microVM per job through a microsandbox server's JSON-RPC API (sandbox.start / command.run / stop)",
  settings: {
    url: {
      env: "MSB_SERVER_URL",
      doc: "the microsandbox server",
      default: () => "http://127.0.0.1:5555",
      ...settingTypes.url(["http", "https"]),
    },
    apiKey: { env: "MSB_API_KEY", doc: "API key (Bearer); or set SANDQUEUE_MSB_API_KEY_FILE", secret: true, ...settingTypes.text("an API key") },
    apiKeyFile: { env: "SANDQUEUE_MSB_API_KEY_FILE", doc: "file holding the API key (first line), when MSB_API_KEY is unset", ...settingTypes.path() },
    namespace: {
      env: "SANDQUEUE_MSB_NAMESPACE",
      doc: "namespace of sandqueue's sandboxes on the server",
      default: () => "sandqueue",
      accepts: "a name of [a-z0-9-]",
      schema: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, { error: "expected a name of [a-z0-9-], at most 63 characters" }),
    },
    cpus: { env: "SANDQUEUE_MSB_CPUS", doc: "vCPUs of each sandbox", default: () => "1", ...settingTypes.int(1, 64) },
    requestTimeoutMs: requests.timeoutMs,
    retries: requests.retries,
  },
  // The microVM's memory is a hard cap for everything in it; an OOM kill inside is not reported as such.
  // command.run returns line-split text and microsandbox 0.2.x sandboxes have network (the server's
  // config has no network scope): the shim makes up for both.
  capabilities: shimCapabilities(true),
  async create(s, ctx) {
    const { MicrosandboxProvider } = await import("./microsandbox-provider.js");
    const { readApiKey } = await import("../remote/http-client.js");
    return new MicrosandboxProvider({
      url: s.url ?? "http://127.0.0.1:5555",
      apiKey: await readApiKey(s.apiKey, s.apiKeyFile),
      namespace: s.namespace ?? "sandqueue",
      cpus: s.cpus ?? 1,
      requestTimeoutMs: s.requestTimeoutMs ?? 60_000,
      retries: s.retries ?? 4,
      owner: ctx.workerId,
    });
  },
});
