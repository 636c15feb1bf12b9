/** Registry entry of the northflank (service instances, through @northflank/js-client) provider. */
import { z } from "zod";
import { ConfigError, ErrorCodes } from "../../errors/index.js";
import { defineProvider } from "../definition.js";
import { credentialSettings, settingTypes } from "../settings.js";
import { NORTHFLANK_CAPABILITIES } from "./capabilities.js";

const apiToken = credentialSettings("SANDQUEUE_NORTHFLANK_API_TOKEN", "API token", "Bearer");

const TAGS_ACCEPTS = "comma-separated tags (each defined in the team already), or empty";
const tagList = z.string().transform((s, ctx) => {
  const tags = s.split(",").map((t) => t.trim()).filter(Boolean);
  const bad = tags.find((t) => !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(t));
  if (bad !== undefined) {
    ctx.addIssue({ code: "custom", message: `expected ${TAGS_ACCEPTS}; ${JSON.stringify(bad)} is not a tag` });
    return z.NEVER;
  }
  return tags;
});

export const northflankDefinition = defineProvider({
  name: "northflank",
  summary: "jobs in Northflank service instances through @northflank/js-client: an ephemeral deployment service per sandbox, or leased instances of an attached service (never deleted); exec and tar over its exec session",
  settings: {
    apiToken: apiToken.value,
    apiTokenFile: apiToken.file,
    baseUrl: {
      env: "SANDQUEUE_NORTHFLANK_BASE_URL",
      doc: "API host, REST and exec socket (unset: the SDK's https://api.northflank.com)",
      ...settingTypes.url(["https", "http"]),
    },
    projectId: {
      env: "SANDQUEUE_NORTHFLANK_PROJECT_ID",
      doc: "project the services (and leases) live in (required)",
      ...settingTypes.text("a project id"),
    },
    teamId: {
      env: "SANDQUEUE_NORTHFLANK_TEAM_ID",
      doc: "team of the project (unset: the token's own)",
      ...settingTypes.text("a team id"),
    },
    mode: {
      env: "SANDQUEUE_NORTHFLANK_MODE",
      doc: "ephemeral: a service per sandbox, deleted on release; attach: jobs in the instances of SANDQUEUE_NORTHFLANK_SERVICE_ID, never deleted",
      default: () => "ephemeral",
      accepts: "ephemeral or attach",
      schema: z.enum(["ephemeral", "attach"], { error: "expected ephemeral or attach" }),
    },
    serviceId: {
      env: "SANDQUEUE_NORTHFLANK_SERVICE_ID",
      doc: "attach: the existing service whose running instances run jobs, one job per instance at a time",
      ...settingTypes.text("a service id"),
    },
    deploymentPlan: {
      env: "SANDQUEUE_NORTHFLANK_DEPLOYMENT_PLAN",
      doc: "ephemeral: deployment plan of each service",
      default: () => "nf-compute-20",
      ...settingTypes.text("a deployment plan id"),
    },
    images: {
      env: "SANDQUEUE_NORTHFLANK_IMAGES",
      doc: "job image → image path (ephemeral: what each service runs; attach: what the attached service must run); unmapped images are used as image paths",
      default: () => "host=python:3.12-slim",
      ...settingTypes.pairs("image=image-path"),
    },
    tags: {
      env: "SANDQUEUE_NORTHFLANK_TAGS",
      doc: "ephemeral: tags of each created service",
      default: () => "",
      accepts: TAGS_ACCEPTS,
      schema: tagList,
    },
    exec: {
      env: "SANDQUEUE_NORTHFLANK_EXEC",
      doc: "auto: a command runs directly where the instance's only interface is lo, else under the exec shim (python3; cuts the network or refuses); shim: always the shim",
      default: () => "auto",
      accepts: "auto or shim",
      schema: z.enum(["auto", "shim"], { error: "expected auto or shim" }),
    },
    createTimeoutMs: {
      env: "SANDQUEUE_NORTHFLANK_CREATE_TIMEOUT_MS",
      doc: "ephemeral: how long a service may take to run an instance; attach: how long to wait for a free instance",
      default: () => "300000",
      ...settingTypes.int(1000, 3_600_000),
    },
    requestTimeoutMs: {
      env: "SANDQUEUE_NORTHFLANK_REQUEST_TIMEOUT_MS",
      doc: "how long one REST call may take",
      default: () => "30000",
      ...settingTypes.int(1000, 600_000),
    },
    retries: {
      env: "SANDQUEUE_NORTHFLANK_RETRIES",
      doc: "further attempts of a REST call after a 429/5xx/network failure",
      default: () => "3",
      ...settingTypes.int(0, 10),
    },
  },
  capabilities: NORTHFLANK_CAPABILITIES,
  async create(s, ctx) {
    const { readApiKey } = await import("../remote/http-client.js");
    const token = await readApiKey(s.apiToken, s.apiTokenFile);
    if (!token) {
      throw new ConfigError(ErrorCodes.CONFIG_INVALID, "northflank provider: set SANDQUEUE_NORTHFLANK_API_TOKEN or SANDQUEUE_NORTHFLANK_API_TOKEN_FILE");
    }
    if (!s.projectId) throw new ConfigError(ErrorCodes.CONFIG_INVALID, "northflank provider: set SANDQUEUE_NORTHFLANK_PROJECT_ID (the project services live in)");
    const mode = s.mode ?? "ephemeral";
    if (mode === "attach" && !s.serviceId) {
      throw new ConfigError(ErrorCodes.CONFIG_INVALID, "northflank provider: SANDQUEUE_NORTHFLANK_MODE=attach needs SANDQUEUE_NORTHFLANK_SERVICE_ID (the service jobs run in)");
    }
    const { NorthflankProvider } = await import("./northflank-provider.js");
    return new NorthflankProvider({
      token,
      ...(s.baseUrl ? { baseUrl: s.baseUrl } : {}),
      projectId: s.projectId,
      ...(s.teamId ? { teamId: s.teamId } : {}),
      mode,
      ...(s.serviceId ? { serviceId: s.serviceId } : {}),
      deploymentPlan: s.deploymentPlan ?? "nf-compute-20",
      images: s.images ?? { host: "python:3.12-slim" },
      tags: s.tags ?? [],
      exec: s.exec ?? "auto",
      owner: ctx.workerId,
      createTimeoutMs: s.createTimeoutMs ?? 300_000,
      requestTimeoutMs: s.requestTimeoutMs ?? 30_000,
      retries: s.retries ?? 3,
    });
  },
});
