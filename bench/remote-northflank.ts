/**
 * `npm run bench -- remote`, northflank: the stand-in (ephemeral mode), and the official SDK alone as the
 * minimal client: create a deployment service, read its containers until one runs, one exec session
 * (stdin ended at once, as the provider does: the stand-in starts a command on stdInEnd), delete.
 */
import { randomBytes } from "node:crypto";
import { ApiClient, ApiClientInMemoryContextProvider } from "@northflank/js-client";
import type { LocalProvider } from "../providers/local/index.js";
import { NorthflankStandin } from "../standins/northflank/index.js";
import { BENCH_CODE, type RemoteBenchTarget } from "./remote-target.js";

export const northflankTarget: RemoteBenchTarget = {
  provider: "northflank",
  async start(local: LocalProvider) {
    const standin = await NorthflankStandin.start({ provider: local });
    const contexts = new ApiClientInMemoryContextProvider();
    contexts.addContext({ name: "bench", token: standin.token, host: standin.url });
    const api = new ApiClient(contexts, { throwErrorOnHttpErrorCode: true });
    const project = { projectId: standin.projectId };
    return {
      env: standin.envVars(),
      async minimalJob() {
        const serviceId = `m-${randomBytes(6).toString("hex")}`;
        await api.create.service.deployment({
          parameters: project,
          data: {
            name: serviceId,
            billing: { deploymentPlan: "nf-compute-20" },
            deployment: { instances: 1, external: { imagePath: "python:3.12-slim" }, docker: { configType: "customCommand", customCommand: "sleep infinity" } },
          },
        });
        let instanceName: string | undefined;
        while (!instanceName) {
          const c = await api.get.service.containers({ parameters: { ...project, serviceId } });
          instanceName = c.data.containers?.find((x) => x.status === "TASK_RUNNING")?.name;
          if (!instanceName) await new Promise((r) => setTimeout(r, 50));
        }
        const session = await api.exec.execServiceSession({ ...project, serviceId }, { command: ["python3", "-c", BENCH_CODE], shell: "none", instanceName });
        const out: Buffer[] = [];
        session.stdOut.on("data", (c: Buffer) => out.push(c));
        const ended = new Promise((r) => session.stdOut.once("end", r));
        session.stdIn.end();
        await session.waitForCommandResult();
        await ended;
        return { stdout: Buffer.concat(out).toString(), deleted: api.delete.service({ parameters: { ...project, serviceId } }).then(() => undefined) };
      },
      async count() {
        return standin.serviceList().length;
      },
      stop: () => standin.stop(),
    };
  },
};
