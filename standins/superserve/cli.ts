/**
 * `npm run standin -- superserve --env-file FILE [options]`: starts the
 * Superserve stand-in on 127.0.0.1, writes the variables a worker needs
 * (SANDQUEUE_PROVIDER, SANDQUEUE_SUPERSERVE_BASE_URL,
 * SANDQUEUE_SUPERSERVE_DATA_PLANE_URL, SANDQUEUE_SUPERSERVE_API_KEY) to FILE,
 * and runs until SIGTERM or SIGINT (then deletes every sandbox and the file).
 */
import { parseArgs } from "node:util";
import { serveStandin } from "../serve-standin.js";
import { parseIntFlag, parsePairs } from "../../cli/args.js";
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
  const { values } = parseArgs({
    args,
    options: {
      "env-file": { type: "string" },
      "control-port": { type: "string" },
      "data-port": { type: "string" },
      "api-key": { type: "string" },
      template: { type: "string", multiple: true },
      "memory-mb": { type: "string" },
      pids: { type: "string" },
      "transition-ms": { type: "string" },
      "work-root": { type: "string" },
      "images-dir": { type: "string" },
      help: { type: "boolean" },
    },
  });
  if (values.help) {
    console.log(SUPERSERVE_USAGE);
    return 0;
  }
  return serveStandin({
    name: "superserve",
    usage: SUPERSERVE_USAGE,
    flags: values,
    env,
    start: (provider) => {
      const templates = parsePairs("template", values.template);
      return SuperserveStandin.start({
        provider,
        controlPort: values["control-port"] === undefined ? 0 : parseIntFlag("control-port", values["control-port"], 0, 65535),
        dataPort: values["data-port"] === undefined ? 0 : parseIntFlag("data-port", values["data-port"], 0, 65535),
        ...(values["api-key"] ? { apiKey: values["api-key"] } : {}),
        ...(Object.keys(templates).length ? { templates } : {}),
        ...(values["memory-mb"] ? { memoryMb: parseIntFlag("memory-mb", values["memory-mb"], 16, 1024 * 1024) } : {}),
        ...(values.pids ? { pidsLimit: parseIntFlag("pids", values.pids, 1, 4_000_000) } : {}),
        ...(values["transition-ms"] ? { transitionMs: parseIntFlag("transition-ms", values["transition-ms"], 0, 600_000) } : {}),
      });
    },
    envFile: (standin) => standin.envFile(),
    where: (standin) => `control ${standin.controlUrl}, data ${standin.dataUrl}`,
  });
}
