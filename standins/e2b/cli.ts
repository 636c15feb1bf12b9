/**
 * `npm run standin -- e2b --env-file FILE [options]`: starts the E2B
 * stand-in on 127.0.0.1, writes the variables a worker needs
 * (SANDQUEUE_PROVIDER, SANDQUEUE_E2B_API_URL, SANDQUEUE_E2B_SANDBOX_URL,
 * SANDQUEUE_E2B_API_KEY) to FILE, and runs until SIGTERM or SIGINT (then
 * kills every sandbox and removes the file).
 */
import { envFileOutput, parseStandinArgs, portFlag, serveStandin, sizeOptions } from "../serve-standin.js";
import { parsePairs } from "../../cli/args.js";
import { E2bStandin } from "./server.js";

export const E2B_USAGE = `usage: npm run standin -- e2b --env-file FILE [options]

  --env-file FILE          write SANDQUEUE_E2B_* variables for a worker here (required; mode 0600)
  --control-port N         control plane (the SDK's apiUrl) on 127.0.0.1:N (default: a free port)
  --envd-port N            every sandbox's envd (the SDK's sandboxUrl) on 127.0.0.1:N (default: a free port)
  --api-key KEY            the API key to accept (default: a random one, written to the env file)
  --template NAME=LOCAL    serve template NAME on local image LOCAL (repeatable; default base on "host")
  --memory-mb N            memory of every sandbox (default 1024)
  --pids N                 pids limit of every sandbox (default 256)
  --work-root DIR          local sandboxes' work root (default: a fresh temporary directory)
  --images-dir DIR         local images (default $SANDQUEUE_IMAGES_DIR or .sandqueue/images)`;

export async function runE2bStandin(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const values = parseStandinArgs(args, {
    "env-file": { type: "string" },
    "control-port": { type: "string" },
    "envd-port": { type: "string" },
    "api-key": { type: "string" },
    template: { type: "string", multiple: true },
  });
  return serveStandin({
    name: "e2b",
    usage: E2B_USAGE,
    flags: values,
    env,
    output: envFileOutput((standin: E2bStandin) => standin.envFile()),
    start: (provider) => {
      const templates = parsePairs("template", values.template);
      return E2bStandin.start({
        provider,
        controlPort: portFlag("control-port", values["control-port"]),
        envdPort: portFlag("envd-port", values["envd-port"]),
        ...(values["api-key"] ? { apiKey: values["api-key"] } : {}),
        ...(Object.keys(templates).length ? { templates } : {}),
        ...sizeOptions(values, "memoryMb", "pidsLimit"),
      });
    },
    where: (standin) => `control ${standin.controlUrl}, envd ${standin.envdUrl}`,
  });
}
