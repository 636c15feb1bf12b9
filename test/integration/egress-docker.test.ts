/**
 * Network policies through docker-provider sandboxes (Podman's Docker API,
 * scripts/setup.d/podman.sh): a real worker and Redis; the container keeps
 * NetworkMode "none" and reaches the proxy through the bridge in its
 * namespace. The sandqueue-python image has no curl and a minimal Python
 * (no http.client, so no urllib): the job's client speaks HTTP and CONNECT
 * over Python sockets to the proxy named by HTTP_PROXY, with ssl for TLS.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import path, { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SandqueueClient } from "../../producer/client.js";
import type { JobResult } from "../../producer/job-result.js";
import { EngineClient } from "../../providers/docker/engine-client.js";
import { DEFAULT_EGRESS_CONFIG } from "../../worker/egress/config.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { makeTestCa, startHttpUpstream, startTlsUpstream, testBytes, type TestCa, type Upstream } from "../support/egress-fixtures.js";
import { startTestWorker, tempDir, testClient, uniqueQueue } from "../support/harness.js";

const ROOT = path.resolve(import.meta.dirname, "../..");
const DOCKER_HOST = process.env.DOCKER_HOST ?? `unix://${path.join(ROOT, ".sandqueue/podman/podman.sock")}`;
const IMAGE = "sandqueue-python";
/** Where the worker's docker provider keeps egress directories: <state dir>/egress (the state dir is ./.sandqueue). */
const EGRESS_ROOT = path.join(process.cwd(), ".sandqueue", "egress");
const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
const SECRET_VALUE = `docker-egress-s3cr3t-${process.pid}-${Date.now()}`;

/** The job's client: `client.py get URL`, `client.py tls HOST:PORT PATH CAFILE`; prints status and the body's sha256. */
const CLIENT = `
import hashlib, os, socket, ssl, sys
proxy = os.environ["HTTP_PROXY"].split("//", 1)[1].rstrip("/")
phost, pport = proxy.rsplit(":", 1)
def read_all(s):
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
def answer(data):
    head, _, body = data.partition(b"\\r\\n\\r\\n")
    status = head.split(b" ")[1].decode()
    print(status, hashlib.sha256(body).hexdigest(), "" if status == "200" else body[:300].decode("latin1"))
mode = sys.argv[1]
s = socket.create_connection((phost, int(pport)))
if mode == "get":
    url = sys.argv[2]
    s.sendall(f"GET {url} HTTP/1.0\\r\\nHost: {url.split('/')[2]}\\r\\n\\r\\n".encode())
    answer(read_all(s))
else:
    authority, path, cafile = sys.argv[2:5]
    s.sendall(f"CONNECT {authority} HTTP/1.1\\r\\nHost: {authority}\\r\\n\\r\\n".encode())
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += s.recv(1)
    status = head.split(b" ")[1].decode()
    if status != "200":
        print("connect", status)
        sys.exit(0)
    t = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname=authority.rsplit(":", 1)[0])
    t.sendall(f"GET {path} HTTP/1.0\\r\\nHost: {authority}\\r\\n\\r\\n".encode())
    answer(read_all(t))
`;

async function requireEngine(): Promise<void> {
  const engine = new EngineClient({ dockerHost: DOCKER_HOST });
  try {
    await engine.json({ method: "GET", path: `/images/${IMAGE}/json` });
  } catch (err) {
    throw new Error(`no container engine with image ${IMAGE} at ${DOCKER_HOST} (${(err as Error).message}): run scripts/setup.d/podman.sh (as root), or set DOCKER_HOST`);
  } finally {
    engine.close();
  }
}

describe("network policies through docker sandboxes (real worker)", () => {
  const dir = tempDir("egress-docker");
  const hostsFile = join(dir, "hosts");
  const queue = uniqueQueue("egd");
  let testCa: TestCa;
  let plain: Upstream;
  let secure: Upstream;
  let worker: WorkerRuntime;
  let client: SandqueueClient;

  beforeAll(async () => {
    await requireEngine();
    testCa = makeTestCa(dir, ["tls.test", "secret.test"]);
    plain = await startHttpUpstream();
    secure = await startTlsUpstream(testCa);
    writeFileSync(hostsFile, ["plain.test", "other.test", "a.test", "b.test", "tls.test", "secret.test"].map((n) => `127.0.0.1 ${n}`).join("\n") + "\n");
    process.env.SANDQUEUE_SECRET_DOCKER_EGRESS_TOKEN = SECRET_VALUE;
    worker = await startTestWorker(queue, {
      provider: "docker",
      providerSettings: { dockerHost: DOCKER_HOST, poolMinIdle: 0, poolMaxSize: 0 },
      egress: { ...DEFAULT_EGRESS_CONFIG, hostsFile, allowPrivate: true, upstreamCaFile: join(dir, "ca.pem") },
      concurrency: 2,
    });
    client = testClient(queue);
  }, 120_000);

  afterAll(async () => {
    delete process.env.SANDQUEUE_SECRET_DOCKER_EGRESS_TOKEN;
    await client?.close();
    await worker?.close(0);
    await Promise.all([plain?.close(), secure?.close()]);
  });

  const run = async (network: unknown, script: string, files: Record<string, string> = {}): Promise<JobResult> =>
    // A loaded 2-core machine starts python in a container slowly: a wall time well above the default.
    client.waitForResult((await client.enqueue({ image: IMAGE, kind: "shell", network, files: { "client.py": CLIENT, ...files }, script, limits: { timeoutMs: 60_000 } })).id, {
      timeoutMs: 90_000,
    });

  it("an allowed GET arrives byte-exact; a denied host gets 403 naming the rule; no route without the proxy", async () => {
    const n = 150_000;
    const other = Object.values(networkInterfaces()).flat().find((i) => i && i.family === "IPv4" && !i.internal)?.address;
    const r = await run(
      { default: "deny", egress: ["plain.test", { host: "other.test", action: "deny" }] },
      [
        `python3 client.py get http://plain.test:${plain.port}/bytes/${n}`,
        `python3 client.py get http://other.test:${plain.port}/x`,
        `python3 -c "
import socket
for addr in [('127.0.0.1', ${plain.port})${other ? `, ('${other}', ${plain.port})` : ""}]:
    try:
        socket.create_connection(addr, timeout=3).close(); print('connected', addr)
    except OSError as e:
        print('refused', type(e).__name__)"`,
      ].join("\n"),
    );
    expect(r.status, r.stderr).toBe("succeeded");
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toBe(`200 ${sha(testBytes(n))} `);
    expect(lines[1]).toMatch(/^403 [0-9a-f]{64} sandqueue egress proxy: GET http:\/\/other\.test:\d+\/x denied by network\.egress\[1\] \{"host":"other\.test","action":"deny"\}/);
    expect(r.stdout).not.toContain("connected");
    expect(r.stdout).toContain("refused ConnectionRefusedError");
    expect(plain.seen.some((s) => s.url === "/x")).toBe(false);
  });

  it("CONNECT tunnels TLS end to end; a bound secret reaches the upstream over opened TLS and is nowhere in the sandbox", async () => {
    const before = secure.seen.length;
    const r = await run(
      {
        default: "deny",
        egress: ["tls.test", "secret.test"],
        secrets: [{ name: "DOCKER_EGRESS_TOKEN", hosts: ["secret.test"], header: "Authorization", format: "Bearer {}" }],
      },
      [
        // Only the upstream's CA trusted: a blind tunnel.
        `python3 client.py tls tls.test:${secure.port} /bytes/5000 test-ca.pem`,
        // The worker's CA (SSL_CERT_FILE): the proxy opens the TLS to add the header.
        `python3 client.py tls secret.test:${secure.port} /bytes/6 "$SSL_CERT_FILE"`,
        `python3 client.py tls other.test:${secure.port} /bytes/7 test-ca.pem`,
        "env; cat /proc/self/environ | tr '\\0' '\\n'",
        `grep -rl -- '${SECRET_VALUE.slice(0, 16)}' /workspace /tmp /sandqueue-egress /etc 2>/dev/null; echo "grep done"`,
      ].join("\n"),
      { "test-ca.pem": testCa.caPem },
    );
    expect(r.status, r.stderr).toBe("succeeded");
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toBe(`200 ${sha(testBytes(5000))} `);
    expect(lines[1]).toBe(`200 ${sha(testBytes(6))} `);
    expect(lines[2]).toBe("connect 403");
    expect(lines.at(-1)).toBe("grep done");
    expect(r.stdout).not.toContain(SECRET_VALUE);
    expect(r.stdout).not.toContain("***");
    expect(r.stdout).not.toContain("DOCKER_EGRESS_TOKEN");
    const seen = secure.seen.slice(before);
    expect(seen.find((s) => s.url === "/bytes/6")?.headers.authorization).toBe(`Bearer ${SECRET_VALUE}`);
    expect(seen.find((s) => s.url === "/bytes/5000")?.headers.authorization).toBeUndefined();
    expect(seen.some((s) => s.url === "/bytes/7")).toBe(false);
  });

  it("two concurrent jobs' policies never mix", async () => {
    const script = (mine: string, theirs: string): string =>
      `date +%s.%N >&2; for i in $(seq 5); do python3 client.py get http://${mine}.test:${plain.port}/bytes/3 | head -n1 | cut -c1-3; python3 client.py get http://${theirs}.test:${plain.port}/bytes/3 | head -n1 | cut -c1-3; done; date +%s.%N >&2`;
    const [a, b] = await Promise.all([run({ default: "deny", egress: ["a.test"] }, script("a", "b")), run({ default: "deny", egress: ["b.test"] }, script("b", "a"))]);
    for (const r of [a, b]) {
      expect(r.status, r.stderr).toBe("succeeded");
      expect(r.stdout.trim().split("\n")).toEqual(Array.from({ length: 5 }, () => ["200", "403"]).flat());
    }
    // They did run at the same time: each started before the other ended.
    const [aStart, aEnd] = a.stderr.trim().split("\n").map(Number) as [number, number];
    const [bStart, bEnd] = b.stderr.trim().split("\n").map(Number) as [number, number];
    expect(aStart).toBeLessThan(bEnd);
    expect(bStart).toBeLessThan(aEnd);
  });

  it("leaves no bridge and no egress directory behind once its jobs are done", async () => {
    // Released in the background after each result: give the last releases a moment.
    const deadline = Date.now() + 10_000;
    const leftovers = (): string[] => [
      ...execFileSync("ps", ["--ppid", String(process.pid), "-o", "args="], { encoding: "utf8" }).split("\n").filter((l) => l.includes("egress-bridge.py")),
      ...(existsSync(EGRESS_ROOT) ? readdirSync(EGRESS_ROOT).filter((n) => n.startsWith(`sq-${process.pid}-`)) : []),
    ];
    while (leftovers().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(leftovers()).toEqual([]);
  });
});
