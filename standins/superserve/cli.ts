/**
 * `npm run standin -- superserve --env-file FILE [options]`: starts the
 * Superserve stand-in on 127.0.0.1, writes the variables a worker needs
 * (SANDQUEUE_PROVIDER, SANDQUEUE_SUPERSERVE_BASE_URL,
 * SANDQUEUE_SUPERSERVE_DATA_PLANE_URL, SANDQUEUE_SUPERSERVE_API_KEY) to FILE,
 * and runs until SIGTERM or SIGINT (then deletes every sandbox and the file).
 */
import { envFileOutput, intOption, parseStandinArgs, portFlag, serveStandin, sizeOptions } from "../serve-standin.js";
import { parsePairs } from "../../cli/args.js";
import { SuperserveStandin } from "./server.js";

export const SUPERSERVE_USAGE = `usage: npm run standin -- superserve --env-file FILE [options]

  --env-file FILE          write SANDQUEUE_SUPERSERVE_* variables for a worker here (required; mode 0600)
  --control-port N         control plane (the SDK's base URL) on 127.0.0.1:N (default: a free port)
  --data-port N            data plane (exec, files) on 127.0.0.1:N (default: a free port)
  --api-key KEY            the API key to accept (default: a random one, written to the env file)
  --template NAME=LOCAL    serve template NAME on local image LOCAL (repeatable; default superserve/base
                           and superserve/python-3.11 on "host")
  --memory-mb N            memory of every sandbox (default 1024)
  --pids N                 pids limit of every sandbox (default 256)
  --transition-ms N        how long pausing/resuming last (default 30)
  --work-root DIR          local sandboxes' work root (default: a fresh temporary directory)
  --images-dir DIR         local images (default $SANDQUEUE_IMAGES_DIR or .sandqueue/images)`;

export async function runSuperserveStandin(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const values = parseStandinArgs(args, {
    "env-file": { type: "string" },
    "control-port": { type: "string" },
    "data-port": { type: "string" },
    "api-key": { type: "string" },
    template: { type: "string", multiple: true },
    "transition-ms": { type: "string" },
  });
  return serveStandin({
    name: "superserve",
    usage: SUPERSERVE_USAGE,
    flags: values,
    env,
    output: envFileOutput((standin: SuperserveStandin) => standin.envFile()),
    start: (provider) => {
      const templates = parsePairs("template", values.template);
      return SuperserveStandin.start({
        provider,
        controlPort: portFlag("control-port", values["control-port"]),
        dataPort: portFlag("data-port", values["data-port"]),
        ...(values["api-key"] ? { apiKey: values["api-key"] } : {}),
        ...(Object.keys(templates).length ? { templates } : {}),
        ...sizeOptions(values, "memoryMb", "pidsLimit"),
        ...intOption("transitionMs", "transition-ms", values["transition-ms"], 0, 600_000),
      });
    },
    where: (standin) => `control ${standin.controlUrl}, data ${standin.dataUrl}`,
  });
}
