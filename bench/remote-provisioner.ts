/** `npm run bench -- remote`, provisioner: the stand-in and a minimal client (create, readiness, bash/exec, delete), as deer-flow's backend does it. */
import { randomBytes } from "node:crypto";
import type { LocalProvider } from "../providers/local/index.js";
import { ProvisionerStandin } from "../standins/provisioner/index.js";
import { BENCH_CODE, type RemoteBenchTarget } from "./remote-target.js";

export const provisionerTarget: RemoteBenchTarget = {
  provider: "provisioner",
  async start(local: LocalProvider) {
    const standin = await ProvisionerStandin.start({ provider: local, image: "host" });
    const headers = { "X-API-Key": standin.apiKey ?? "", "Content-Type": "application/json" };
    const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
      const res = await fetch(`${standin.url}${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
      if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status}`);
      return (await res.json()) as T;
    };
    return {
      env: standin.envVars(),
      async minimalJob() {
        const id = `m-${randomBytes(6).toString("hex")}`;
        const { sandbox_url } = await api<{ sandbox_url: string }>("POST", "/api/sandboxes", { sandbox_id: id, thread_id: id });
        // Readiness as deer-flow's wait_for_sandbox_ready: poll GET /v1/sandbox.
        for (;;) {
          const r = await fetch(`${sandbox_url}/v1/sandbox`).catch(() => null);
          if (r?.ok) break;
          await r?.body?.cancel();
          await new Promise((res) => setTimeout(res, 10));
        }
        const res = await fetch(`${sandbox_url}/v1/bash/exec`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ command: `python3 -c '${BENCH_CODE}'` }),
        });
        const env = (await res.json()) as { data: { stdout: string } };
        return { stdout: env.data.stdout, deleted: api("DELETE", `/api/sandboxes/${id}`).then(() => undefined) };
      },
      async count() {
        return (await api<{ count: number }>("GET", "/api/sandboxes")).count;
      },
      stop: () => standin.stop(),
    };
  },
};
