/**
 * `npm run bench -- remote`, e2b: the stand-in, and the official SDK alone
 * (Sandbox.create, commands.run, kill) as the minimal client; `e2b+pool`:
 * the same with the worker's warm pool of one (SANDQUEUE_POOL_MIN_IDLE=1),
 * timed only once the pool has refilled, so its creates never overlap
 * either side's job.
 */
import { Sandbox } from "e2b";
import type { LocalProvider } from "../providers/local/index.js";
import { E2bStandin } from "../standins/e2b/index.js";
import { BENCH_CODE, envFromFile, type RemoteBenchTarget, type RemoteStandinHandle } from "./remote-target.js";

const POOLED = "sandqueue.io/pooled";

export const e2bTarget: RemoteBenchTarget = {
  provider: "e2b",
  start: (local) => startE2b(local),
};

export const e2bPoolTarget: RemoteBenchTarget = {
  provider: "e2b",
  name: "e2b+pool",
  workerEnv: { SANDQUEUE_POOL_MIN_IDLE: "1" },
  start: (local) => startE2b(local, 1),
};

async function startE2b(local: LocalProvider, pool = 0): Promise<RemoteStandinHandle> {
  const standin = await E2bStandin.start({ provider: local });
  // The SDK's own options (apiUrl, sandboxUrl: @internal in its types, honoured at run time), as the provider passes them.
  const conn = { apiKey: standin.apiKey, apiUrl: standin.controlUrl, sandboxUrl: standin.envdUrl, debug: false };
  return {
    env: envFromFile(standin.envFile()),
    async minimalJob() {
      const sbx = await Sandbox.create("base", conn);
      const r = await sbx.commands.run(`python3 -c '${BENCH_CODE}'`);
      return { stdout: r.stdout, deleted: sbx.kill().then(() => undefined) };
    },
    async count() {
      return standin.sandboxList().filter((s) => s.metadata[POOLED] !== "true").length;
    },
    async atRest() {
      return standin.sandboxList().filter((s) => s.metadata[POOLED] === "true").length === pool;
    },
    stop: () => standin.stop(),
  };
}
