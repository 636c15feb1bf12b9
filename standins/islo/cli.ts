/**
 * `npm run standin -- islo --env-file FILE [options]`: starts the islo
 * stand-in on 127.0.0.1, writes the variables a worker needs
 * (SANDQUEUE_ISLO_BASE_URL, SANDQUEUE_ISLO_COMPUTE_URL,
 * SANDQUEUE_ISLO_API_KEY) to FILE, and runs until SIGTERM or SIGINT (then
 * deletes every sandbox and the file).
 */
import path from "node:path";
import { envFileOutput, intOption, parseStandinArgs, portFlag, serveStandin, sizeOptions } from "../serve-standin.js";
import { parsePairs } from "../../cli/args.js";
import { IsloStandin } from "./server.js";
import { DEFAULT_EGRESS_CONFIG } from "../../worker/egress/config.js";

export const ISLO_USAGE = `usage: npm run standin -- islo --env-file FILE [options]

  --env-file FILE          write SANDQUEUE_ISLO_* variables for a worker here (required; mode 0600)
  --control-port N         control plane (auth, gateway profiles) on 127.0.0.1:N (default: a free port)
  --compute-port N         compute plane (sandboxes) on 127.0.0.1:N (default: a free port)
  --api-key KEY            the API key to accept (default: a random one, written to the env file)
  --image IMAGE=LOCAL      run sandboxes of islo image IMAGE on local image LOCAL (repeatable)
  --memory-mb N            memory of sandboxes created without memory_mb (default 512)
  --pids N                 pids limit of every sandbox (default 256)
  --token-ttl S            session token lifetime, seconds (default 600)
  --enforce-gateway        enforce gateway profiles with sandqueue's egress proxy (default: stored only, no network)
  --egress-hosts FILE      (with --enforce-gateway) a hosts-format file the proxy resolves names with
  --allow-private          (with --enforce-gateway) let allowed names resolve to loopback/private addresses
  --work-root DIR          local sandboxes' work root (default: a fresh temporary directory)
  --images-dir DIR         local images (default $SANDQUEUE_IMAGES_DIR or .sandqueue/images)`;

export async function runIsloStandin(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const values = parseStandinArgs(args, {
    "env-file": { type: "string" },
    "control-port": { type: "string" },
    "compute-port": { type: "string" },
    "api-key": { type: "string" },
    image: { type: "string", multiple: true },
    "token-ttl": { type: "string" },
    "enforce-gateway": { type: "boolean" },
    "egress-hosts": { type: "string" },
    "allow-private": { type: "boolean" },
  });
  return serveStandin({
    name: "islo",
    usage: ISLO_USAGE,
    flags: values,
    env,
    output: envFileOutput((standin: IsloStandin) => standin.envFile()),
    start: (provider) =>
      IsloStandin.start({
        provider,
        controlPort: portFlag("control-port", values["control-port"]),
        computePort: portFlag("compute-port", values["compute-port"]),
        ...(values["api-key"] ? { apiKey: values["api-key"] } : {}),
        images: parsePairs("image", values.image),
        ...sizeOptions(values, "defaultMemoryMb", "pidsLimit"),
        ...intOption("tokenTtlSeconds", "token-ttl", values["token-ttl"], 1, 86_400),
        ...(values["enforce-gateway"]
          ? {
              egress: {
                ...DEFAULT_EGRESS_CONFIG,
                ...(values["egress-hosts"] ? { hostsFile: path.resolve(values["egress-hosts"]) } : {}),
                allowPrivate: values["allow-private"] === true,
              },
            }
          : {}),
      }),
    where: (standin) => `control ${standin.controlUrl}, compute ${standin.computeUrl}`,
  });
}
