/** `npm run bench -- remote`, microsandbox: the stand-in and a minimal JSON-RPC client (start, command.run, stop). */
import { randomBytes } from "node:crypto";
import type { LocalProvider } from "../providers/local/index.js";
import { MicrosandboxStandin } from "../standins/microsandbox/index.js";
import { BENCH_CODE, type RemoteBenchTarget } from "./remote-target.js";

export const microsandboxTarget: RemoteBenchTarget = {
  provider: "microsandbox",
  async start(local: LocalProvider) {
    const standin = await MicrosandboxStandin.start({ provider: local, images: { host: "host" }, defaultImage: null });
    const rpc = async <T>(method: string, params: Record<string, unknown>): Promise<T> => {
      const res = await fetch(`${standin.url}/api/v1/rpc`, {
        method: "POST",
        headers: { Authorization: `Bearer ${standin.apiKey}`, "Content-Type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", method, params, id: 1 }),
      });
      const body = (await res.json()) as { result?: T; error?: { message: string } };
      if (body.error) throw new Error(`${method}: ${body.error.message}`);
      return body.result as T;
    };
    const namespace = "bench-minimal";
    return {
      env: { ...standin.envVars(), SANDQUEUE_MSB_NAMESPACE: "sandqueue" },
      async minimalJob() {
        const sandbox = `m-${randomBytes(6).toString("hex")}`;
        await rpc("sandbox.start", { sandbox, namespace, config: { image: "host", memory: 512, cpus: 1 } });
        const r = await rpc<{ output: Array<{ stream: string; text: string }> }>("sandbox.command.run", { sandbox, namespace, command: "python3", args: ["-c", BENCH_CODE] });
        const stdout = r.output.filter((o) => o.stream === "stdout").map((o) => `${o.text}\n`).join("");
        return { stdout, deleted: rpc<string>("sandbox.stop", { sandbox, namespace }).then(() => undefined) };
      },
      async count() {
        return (await rpc<{ sandboxes: unknown[] }>("sandbox.metrics.get", { namespace: "*" })).sandboxes.length;
      },
      stop: () => standin.stop(),
    };
  },
};
