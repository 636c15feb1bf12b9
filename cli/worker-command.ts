/**
 * `sandqueue worker [--provider local] [--concurrency N]`: runs a worker until
 * SIGTERM/SIGINT. The first signal drains (running jobs get the grace period,
 * then go back to the queue); a second signal skips the grace period.
 */
import { parseArgs } from "node:util";
import { refuseEmpty } from "./args.js";
import { parseWorkerConfig } from "../worker/config.js";
import { jsonLogger } from "../worker/log.js";
import { startWorkerRuntime } from "../worker/runtime.js";

export const WORKER_USAGE =
  "usage: sandqueue worker [--provider NAME] [--concurrency N] [--queue NAME] [--redis URL] [--metrics-port PORT]   (NAME: see sandqueue providers)";

export async function workerCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      provider: { type: "string" },
      concurrency: { type: "string" },
      queue: { type: "string" },
      redis: { type: "string" },
      "metrics-port": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${WORKER_USAGE}\n(settings also come from environment variables: see README, Configuration)\n`);
    return 0;
  }
  const { help: _help, ...flags } = values;
  refuseEmpty(flags); // config would read '' as "not given" and fall back to a default
  const config = parseWorkerConfig(env, flags);
  const log = jsonLogger({ worker: config.workerId });
  const runtime = await startWorkerRuntime(config, log);

  await new Promise<void>((resolve) => {
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals): void => {
      signals++;
      log.log("info", "worker.signal", { signal: sig, graceMs: signals === 1 ? config.graceMs : 0 });
      if (signals === 1) void runtime.close(config.graceMs).then(resolve, resolve);
      // A second signal: stop waiting; running jobs go back to the queue now.
      else runtime.worker.abortRunning();
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
  return 0;
}
