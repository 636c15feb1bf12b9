/**
 * `npm run standin -- microsandbox --env-file FILE [options]`: starts the
 * microsandbox stand-in on 127.0.0.1, writes MSB_SERVER_URL and MSB_API_KEY
 * to FILE (mode 0600), and runs until SIGTERM or SIGINT (then stops every
 * sandbox and removes the file).
 */
import { envFileOutput, envFileText, parseStandinArgs, portFlag, serveStandin, sizeOptions } from "../serve-standin.js";
import { parsePairs } from "../../cli/args.js";
import { MicrosandboxStandin } from "./server.js";

export const MICROSANDBOX_USAGE = `usage: npm run standin -- microsandbox --env-file FILE [options]

  --env-file FILE          write MSB_SERVER_URL and MSB_API_KEY for a worker here (required; mode 0600)
  --port N                 listen on 127.0.0.1:N (default: a free port)
  --api-key KEY            the API key to accept (default: a random one, written to the env file)
  --image IMAGE=LOCAL      run sandboxes of image IMAGE on local image LOCAL (repeatable)
  --default-image LOCAL    local image for other images (default host; "none": a failed pull)
  --memory-mb N            memory of sandboxes started without config.memory (default 1024)
  --pids N                 pids limit of every sandbox (default 256)
  --work-root DIR          local sandboxes' work root (default: a fresh temporary directory)
  --images-dir DIR         local images (default $SANDQUEUE_IMAGES_DIR or .sandqueue/images)`;

export async function runMicrosandboxStandin(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const values = parseStandinArgs(args, {
    "env-file": { type: "string" },
    port: { type: "string" },
    "api-key": { type: "string" },
    image: { type: "string", multiple: true },
    "default-image": { type: "string" },
  });
  return serveStandin({
    name: "microsandbox",
    usage: MICROSANDBOX_USAGE,
    flags: values,
    env,
    output: envFileOutput((standin: MicrosandboxStandin) => envFileText(standin.envVars())),
    start: (provider) => {
      const defaultImage = values["default-image"];
      return MicrosandboxStandin.start({
        provider,
        port: portFlag("port", values.port),
        ...(values["api-key"] ? { apiKey: values["api-key"] } : {}),
        images: parsePairs("image", values.image),
        defaultImage: defaultImage === "none" ? null : (defaultImage ?? "host"),
        ...sizeOptions(values, "defaultMemoryMb", "pids"),
      });
    },
    where: (standin) => `listening on ${standin.url}`,
  });
}
