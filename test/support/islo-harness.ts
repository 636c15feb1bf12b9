/** An islo stand-in (real local sandboxes) and islo providers pointed at it, cleaned up after the file. */
import { mkdtemp, rm, rmdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { LocalProvider } from "../../providers/local/index.js";
import { IsloStandin, type IsloStandinOptions } from "../../standins/islo/index.js";
import { IsloProvider, type IsloProviderOptions } from "../../providers/islo/index.js";

export interface IsloHarness {
  standin: IsloStandin;
  local: LocalProvider;
  provider(over?: Partial<IsloProviderOptions>): IsloProvider;
  /** Sandbox names the stand-in holds, then profile names. */
  resources(): Promise<string[]>;
  close(): Promise<void>;
}

export async function startIslo(opts: Partial<IsloStandinOptions> = {}): Promise<IsloHarness> {
  const workRoot = await mkdtemp(path.join(os.tmpdir(), "sandqueue-islo-test-"));
  const local = new LocalProvider({ workRoot, cgroupParent: `sandqueue-islo-test-${process.pid}` });
  const standin = await IsloStandin.start({ provider: local, ...opts });
  const providers: IsloProvider[] = [];
  return {
    standin,
    local,
    provider(over = {}) {
      const p = new IsloProvider({
        controlUrl: standin.controlUrl,
        computeUrl: standin.computeUrl,
        apiKey: standin.apiKey,
        owner: `islo-test-${process.pid}`,
        timeoutMs: 10_000,
        retries: 5,
        backoffMs: 20,
        pollMs: 100,
        readyTimeoutMs: 10_000,
        ...over,
      });
      providers.push(p);
      return p;
    },
    async resources() {
      return [...standin.sandboxList().map((s) => `sandbox:${s.name}`), ...standin.profileList().map((p) => `profile:${p.name}`)].sort();
    },
    async close() {
      await Promise.allSettled(providers.map((p) => p.close()));
      await standin.stop();
      await local.close();
      for (const dir of local.cgroupParentDirs) await rmdir(dir).catch(() => undefined);
      await rm(workRoot, { recursive: true, force: true });
    },
  };
}
