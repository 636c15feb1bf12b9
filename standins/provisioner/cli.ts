/**
 * `npm run standin -- provisioner --env-file FILE [options]`: starts the
 * deer-flow provisioner stand-in (and an AIO sandbox API per sandbox) on
 * 127.0.0.1, writes the SANDQUEUE_PROVISIONER_* variables a worker needs to
 * FILE (mode 0600), and runs until SIGTERM or SIGINT (then deletes every
 * sandbox and the file).
 */
import { envFileOutput, envFileText, intOption, parseStandinArgs, portFlag, serveStandin, sizeOptions } from "../serve-standin.js";
import { ProvisionerStandin } from "./server.js";

export const PROVISIONER_USAGE = `usage: npm run standin -- provisioner --env-file FILE [options]

  --env-file FILE          write SANDQUEUE_PROVISIONER_* variables for a worker here (required; mode 0600)
  --port N                 the provisioner on 127.0.0.1:N (default: a free port); each sandbox gets its own port
  --api-key KEY            the provisioner's API key (default: a random one, written to the env file)
  --sandbox-api-key KEY    ask the AIO sandboxes for this key too (default: none)
  --image LOCAL            local image that plays SANDBOX_IMAGE (default host)
  --memory-mb N            memory of every sandbox (default 1024, the pod limit in app.py)
  --pids N                 pids limit of every sandbox (default 256)
  --start-delay-ms N       how long a new sandbox stays Pending (default 0)
  --work-root DIR          local sandboxes' work root (default: a fresh temporary directory)
  --images-dir DIR         local images (default $SANDQUEUE_IMAGES_DIR or .sandqueue/images)`;

export async function runProvisionerStandin(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const values = parseStandinArgs(args, {
    "env-file": { type: "string" },
    port: { type: "string" },
    "api-key": { type: "string" },
    "sandbox-api-key": { type: "string" },
    image: { type: "string" },
    "start-delay-ms": { type: "string" },
  });
  return serveStandin({
    name: "provisioner",
    usage: PROVISIONER_USAGE,
    flags: values,
    env,
    output: envFileOutput((standin: ProvisionerStandin) => envFileText(standin.envVars())),
    start: (provider) =>
      ProvisionerStandin.start({
        provider,
        port: portFlag("port", values.port),
        ...(values["api-key"] ? { apiKey: values["api-key"] } : {}),
        ...(values["sandbox-api-key"] ? { sandboxApiKey: values["sandbox-api-key"] } : {}),
        ...(values.image ? { image: values.image } : {}),
        ...sizeOptions(values, "memoryMb", "pids"),
        ...intOption("startDelayMs", "start-delay-ms", values["start-delay-ms"], 0, 3_600_000),
      }),
    where: (standin) => `listening on ${standin.url}`,
  });
}
