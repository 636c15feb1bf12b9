/**
 * The `sandqueue` command. Errors with a SandqueueError code print one clear
 * line and exit 2 (usage/config) or 1; anything else is a bug and shows its stack.
 */
import { isSandqueueError, ErrorCodes } from "../errors/index.js";
import { BATCH_USAGE, batchCommand } from "./batch-command.js";
import { DEMO_USAGE, demoCommand } from "./demo-command.js";
import { RUN_USAGE, runCommand } from "./run-command.js";
import { WORKER_USAGE, workerCommand } from "./worker-command.js";

const USAGE = `sandqueue — queue-driven sandbox job runner

${WORKER_USAGE}
${RUN_USAGE}
${BATCH_USAGE}
${DEMO_USAGE}
usage: sandqueue snapshot (get ID --out FILE.tar | ls | rm ID | prune --older-than 7d)
usage: sandqueue image (build NAME [--debian SUITE] [--packages p1,p2] | ls)
usage: sandqueue providers [--json | --markdown]
usage: sandqueue api [--port N] [--host H]                          (the HTTP API; sandqueue api --help)
usage: sandqueue api-key (create NAME [...] | ls | revoke NAME | webhook-secret NAME)

Every command takes --help. Environment: REDIS_URL (default redis://127.0.0.1:6379), SANDQUEUE_QUEUE (default sandqueue); see README.
`;

type Command = (args: string[], env: NodeJS.ProcessEnv) => Promise<number>;

const COMMANDS: Record<string, () => Promise<Command>> = {
  worker: async () => workerCommand,
  run: async () => runCommand,
  batch: async () => batchCommand,
  demo: async () => demoCommand,
  snapshot: async () => (await import("./snapshot-command.js")).snapshotCommand,
  image: async () => (await import("./image-command.js")).imageCommand,
  providers: async () => (await import("./providers-command.js")).providersCommand,
  api: async () => (await import("./api-command.js")).apiCommand,
  "api-key": async () => (await import("./api-key-command.js")).apiKeyCommand,
};

export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "help" || name === "--help" || name === "-h") {
    process.stdout.write(USAGE);
    return name ? 0 : 2;
  }
  const load = COMMANDS[name];
  if (!load) {
    process.stderr.write(`sandqueue: unknown command ${JSON.stringify(name)}\n\n${USAGE}`);
    return 2;
  }
  try {
    return await (await load())(rest, env);
  } catch (err) {
    if (isSandqueueError(err)) {
      process.stderr.write(`sandqueue ${name}: ${err.code}: ${err.message}\n`);
      return err.code === ErrorCodes.CONFIG_INVALID || err.code === ErrorCodes.SPEC_INVALID ? 2 : 1;
    }
    if (err instanceof TypeError && (err as NodeJS.ErrnoException).code?.startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`sandqueue ${name}: ${err.message}\n(sandqueue ${name} --help shows the usage)\n`);
      return 2;
    }
    throw err;
  }
}
