/**
 * `sandqueue api [--port N] [--host H]`: the HTTP API (see README, "From
 * any language"). Runs until SIGTERM/SIGINT; open long-polls and event
 * streams are closed at shutdown (clients retry: the jobs go on).
 */
import { parseArgs } from "node:util";
import { parseApiConfig } from "../api/config.js";
import { startApiServer } from "../api/server.js";
import { jsonLogger } from "../worker/log.js";
import { refuseEmpty } from "./args.js";

export const API_USAGE = "usage: sandqueue api [--port N] [--host H] [--queue NAME] [--redis URL]   (keys: sandqueue api-key create NAME)";

export async function apiCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: "string" },
      host: { type: "string" },
      queue: { type: "string" },
      redis: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${API_USAGE}\n(settings also come from environment variables: SANDQUEUE_API_*, SANDQUEUE_CALLBACK_ALLOW, SANDQUEUE_WEBHOOK_*; see README)\n`);
    return 0;
  }
  const { help: _help, ...flags } = values;
  refuseEmpty(flags);
  const config = parseApiConfig(env, flags);
  const log = jsonLogger({ component: "api" });
  const server = await startApiServer(config, log);
  log.log("info", "api.listening", { url: server.url, queue: config.queue });
  await new Promise<void>((resolve) => {
    const onSignal = (sig: NodeJS.Signals): void => {
      log.log("info", "api.signal", { signal: sig });
      void server.close().then(resolve, resolve);
    };
    process.once("SIGTERM", onSignal);
    process.once("SIGINT", onSignal);
  });
  return 0;
}
