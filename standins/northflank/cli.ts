/**
 * `npm run standin -- northflank --env-file FILE [options]`: starts the
 * Northflank stand-in on 127.0.0.1, writes the variables a worker needs
 * (SANDQUEUE_PROVIDER, SANDQUEUE_NORTHFLANK_BASE_URL, _API_TOKEN,
 * _PROJECT_ID; with --attach-service also _MODE=attach and _SERVICE_ID) to
 * FILE, and runs until SIGTERM or SIGINT (then drops every instance and the
 * file).
 */
import { envFileOutput, parseStandinArgs, portFlag, serveStandin, sizeOptions } from "../serve-standin.js";
import { parseIntFlag, parsePairs, usage } from "../../cli/args.js";
import { NorthflankStandin } from "./server.js";

export const NORTHFLANK_USAGE = `usage: npm run standin -- northflank --env-file FILE [options]

  --env-file FILE          write SANDQUEUE_NORTHFLANK_* variables for a worker here (required; mode 0600)
  --port N                 API and exec socket on 127.0.0.1:N (default: a free port)
  --token TOKEN            the API token to accept (default: a random one, written to the env file)
  --project ID             the project served (default sandqueue-standin)
  --attach-service ID[:N]  a service that exists from the start, with N instances (default 2), for attach
                           mode (repeatable; the env file names the first)
  --image PATH=LOCAL       serve image path PATH on local image LOCAL (repeatable; default python:3.12-slim on "host")
  --memory-mb N            memory of every instance (default 1024)
  --pids N                 pids limit of every instance (default 256)
  --work-root DIR          local sandboxes' work root (default: a fresh temporary directory)
  --images-dir DIR         local images (default $SANDQUEUE_IMAGES_DIR or .sandqueue/images)`;

function attachSpec(v: string): { id: string; instances: number } {
  const [id, n] = v.split(":");
  if (!id || !/^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$/.test(id)) throw usage(`--attach-service ${JSON.stringify(v)}: expected ID[:N], ID a service id (lowercase letters, digits, dashes)`);
  return { id, instances: n === undefined ? 2 : parseIntFlag("attach-service", n, 1, 8) };
}

export async function runNorthflankStandin(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const values = parseStandinArgs(args, {
    "env-file": { type: "string" },
    port: { type: "string" },
    token: { type: "string" },
    project: { type: "string" },
    "attach-service": { type: "string", multiple: true },
    image: { type: "string", multiple: true },
  });
  return serveStandin({
    name: "northflank",
    usage: NORTHFLANK_USAGE,
    flags: values,
    env,
    output: envFileOutput((standin: NorthflankStandin) => standin.envFile()),
    start: (provider) => {
      const images = parsePairs("image", values.image);
      return NorthflankStandin.start({
        provider,
        port: portFlag("port", values.port),
        ...(values.token ? { token: values.token } : {}),
        ...(values.project ? { projectId: values.project } : {}),
        attach: (values["attach-service"] ?? []).map(attachSpec),
        ...(Object.keys(images).length ? { images } : {}),
        ...sizeOptions(values, "memoryMb", "pidsLimit"),
      });
    },
    where: (standin) => `API and exec ${standin.url}, project ${standin.projectId}`,
  });
}
