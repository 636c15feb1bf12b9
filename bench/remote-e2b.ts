/** `npm run bench -- remote`, e2b: the stand-in, and the official SDK alone (Sandbox.create, commands.run, kill) as the minimal client. */
import { Sandbox } from "e2b";
import type { LocalProvider } from "../providers/local/index.js";
import { E2bStandin } from "../standins/e2b/index.js";
import { BENCH_CODE, envFromFile, type RemoteBenchTarget } from "./remote-target.js";

export const e2bTarget: RemoteBenchTarget = {
  provider: "e2b",
  async start(local: LocalProvider) {
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
        return standin.sandboxList().length;
      },
      stop: () => standin.stop(),
    };
  },
};
