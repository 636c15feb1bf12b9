/**
 * Gateway profiles enforced: the islo stand-in started with `egress` runs a
 * sandbox created under a profile behind sandqueue's egress proxy, so a job
 * policy mapped by the islo provider is applied to real traffic (curl and
 * Python's urllib to an upstream on 127.0.0.1, names from a hosts file).
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_EGRESS_CONFIG } from "../../worker/egress/config.js";
import { LABEL_JOB, type SandboxSpec } from "../../providers/provider.js";
import { requireCommand, tempDir } from "../support/harness.js";
import { startHttpUpstream, type Upstream } from "../support/egress-fixtures.js";
import { startIslo, type IsloHarness } from "../support/islo-harness.js";

let h: IsloHarness;
let upstream: Upstream;

beforeAll(async () => {
  requireCommand("curl", "curl");
  const dir = tempDir("islo-gw");
  const hostsFile = join(dir, "hosts");
  writeFileSync(hostsFile, ["open.test", "ro.test", "closed.test", "api.test"].map((n) => `127.0.0.1 ${n}`).join("\n") + "\n");
  upstream = await startHttpUpstream();
  h = await startIslo({ egress: { ...DEFAULT_EGRESS_CONFIG, hostsFile, allowPrivate: true } });
}, 60_000);

afterAll(async () => {
  await h?.close();
  await upstream?.close();
});

const spec = (job: string): SandboxSpec => ({
  image: "host",
  limits: { memoryMb: 256, pids: 64 },
  network: "proxy",
  labels: { [LABEL_JOB]: job },
  annotations: {},
  maxLifetimeMs: 600_000,
});

describe("islo gateway profiles, enforced by the stand-in", () => {
  it("allows what the job's policy allows and refuses the rest: hosts, methods, paths, default deny", async () => {
    const box = await h.provider().acquire(
      {
        ...spec("gw-enforced"),
        egressPolicy: {
          default: "deny",
          egress: ["open.test", { host: "ro.test", methods: ["GET"] }, { host: "api.test", paths: ["/v1/*"] }],
        },
      },
      {},
    );
    const code = (method: string, url: string) => `printf '%s ' "$(curl -s -o /dev/null -w '%{http_code}' -X ${method} ${url})"`;
    const base = (host: string) => `http://${host}:${upstream.port}`;
    const r = await box.exec({
      argv: [
        "/bin/sh",
        "-c",
        [
          code("GET", `${base("open.test")}/a`),
          code("POST", `${base("open.test")}/b`),
          code("GET", `${base("ro.test")}/c`),
          code("POST", `${base("ro.test")}/d`),
          code("GET", `${base("api.test")}/v1/e`),
          code("GET", `${base("api.test")}/v2/f`),
          code("GET", `${base("closed.test")}/g`),
          `python3 -c "import urllib.request; print(urllib.request.urlopen('${base("open.test")}/py').status)"`,
        ].join("; "),
      ],
      env: { PATH: "/usr/bin:/bin" },
      timeoutMs: 30_000,
      maxOutputBytes: 1 << 20,
    });
    expect(r.stderr.toString()).toBe("");
    expect(r.stdout.toString()).toBe("200 200 200 403 200 403 403 200\n");
    // Only the allowed requests reached the upstream.
    expect(upstream.seen.map((s) => `${s.method} ${s.url}`).sort()).toEqual(["GET /a", "GET /c", "GET /py", "GET /v1/e", "POST /b"]);
    await box.release();
    expect(h.standin.profileList()).toEqual([]);
  });

  it("a sandbox without a profile has no route out at all", async () => {
    const box = await h.provider().acquire({ ...spec("gw-none"), network: "none" }, {});
    const r = await box.exec({
      argv: ["/bin/sh", "-c", `curl -s -o /dev/null -w '%{http_code}' --max-time 3 http://127.0.0.1:${upstream.port}/x; echo " exit=$?"`],
      env: { PATH: "/usr/bin:/bin" },
      timeoutMs: 30_000,
      maxOutputBytes: 1 << 20,
    });
    expect(r.stdout.toString()).toMatch(/^000 exit=(7|28)\n$/);
    expect(upstream.seen.some((s) => s.url === "/x")).toBe(false);
    await box.release();
  });
});
