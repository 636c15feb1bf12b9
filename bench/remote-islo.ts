/** `npm run bench -- remote`, islo: the stand-in and a minimal client (key exchange once; create, exec, polls, delete), as islo's REST API is used. */
import { randomBytes } from "node:crypto";
import type { LocalProvider } from "../providers/local/index.js";
import { IsloStandin } from "../standins/islo/index.js";
import { BENCH_CODE, envFromFile, type RemoteBenchTarget } from "./remote-target.js";

export const isloTarget: RemoteBenchTarget = {
  provider: "islo",
  async start(local: LocalProvider) {
    const standin = await IsloStandin.start({ provider: local });
    const auth = await fetch(`${standin.controlUrl}/auth/token`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ access_key: standin.apiKey }),
    });
    const { session_token } = (await auth.json()) as { session_token: string };
    const headers = { Authorization: `Bearer ${session_token}`, "Content-Type": "application/json" };
    const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
      const res = await fetch(`${standin.computeUrl}${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
      if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status}`);
      return (res.status === 204 ? undefined : await res.json()) as T;
    };
    return {
      env: envFromFile(standin.envFile()),
      async minimalJob() {
        const name = `m-${randomBytes(6).toString("hex")}`;
        await api("POST", "/sandboxes", { name, image: "host", memory_mb: 512, internet_enabled: false });
        const { exec_id } = await api<{ exec_id: string }>("POST", `/sandboxes/${name}/exec`, {
          command: ["python3", "-c", BENCH_CODE],
          env: { PATH: "/usr/bin:/bin" },
          workdir: "/workspace",
        });
        // Polled on the provider's schedule (10 ms, doubling), so the comparison is of the calls, not of the interval.
        for (let delay = 10; ; delay = Math.min(delay * 2, 500)) {
          const r = await api<{ status: string; stdout: string }>("GET", `/sandboxes/${name}/exec/${exec_id}`);
          if (r.status !== "running") return { stdout: r.stdout, deleted: api("DELETE", `/sandboxes/${name}`).then(() => undefined) };
          await new Promise((res) => setTimeout(res, delay));
        }
      },
      async count() {
        return (await api<{ total: number }>("GET", "/sandboxes?limit=1")).total;
      },
      stop: () => standin.stop(),
    };
  },
};
