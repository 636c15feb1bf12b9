/** `npm run bench -- remote`, superserve: the stand-in, and the official SDK alone (Sandbox.create, commands.run, kill) as the minimal client. */
import { randomBytes } from "node:crypto";
import { Sandbox } from "@superserve/sdk";
import type { LocalProvider } from "../providers/local/index.js";
import { routeDataPlane, sdkDataPlaneOrigin } from "../providers/superserve/data-plane-route.js";
import { SuperserveStandin } from "../standins/superserve/index.js";
import { BENCH_CODE, envFromFile, type RemoteBenchTarget } from "./remote-target.js";

export const superserveTarget: RemoteBenchTarget = {
  provider: "superserve",
  async start(local: LocalProvider) {
    const standin = await SuperserveStandin.start({ provider: local });
    const conn = { apiKey: standin.apiKey, baseUrl: standin.controlUrl };
    // The same routing the provider installs: the SDK cannot be told its data-plane host.
    routeDataPlane(sdkDataPlaneOrigin(conn.apiKey, conn.baseUrl), standin.dataUrl);
    return {
      env: envFromFile(standin.envFile()),
      async minimalJob() {
        const sbx = await Sandbox.create({ ...conn, name: `m-${randomBytes(6).toString("hex")}`, fromTemplate: "superserve/python-3.11" });
        const r = await sbx.commands.run(`python3 -c '${BENCH_CODE}'`);
        return { stdout: r.stdout, deleted: sbx.kill() };
      },
      async count() {
        return standin.sandboxList().length;
      },
      stop: () => standin.stop(),
    };
  },
};
