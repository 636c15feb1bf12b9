/**
 * Network policies through real sandboxes: a real worker (Redis, BullMQ,
 * the local provider's bubblewrap sandboxes, the egress proxy) runs jobs
 * whose clients (curl, Python's urllib, pip) reach upstreams on 127.0.0.1,
 * named through SANDQUEUE_EGRESS_HOSTS_FILE, only through the proxy.
 * The docker provider gets the same way out: egress-docker.test.ts.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SandqueueClient } from "../../producer/client.js";
import type { JobResult } from "../../producer/job-result.js";
import { DEFAULT_EGRESS_CONFIG, type EgressConfig } from "../../worker/egress/config.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { makeTestCa, startHttpUpstream, startTlsUpstream, testBytes, type TestCa, type Upstream } from "../support/egress-fixtures.js";
import { REDIS_URL, requireCommand, startTestWorker, tempDir, testClient, uniqueQueue } from "../support/harness.js";

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
const SECRET_VALUE = `egress-s3cr3t-${process.pid}-${Date.now()}`;

/** A tiny pure-Python wheel (zip with the package, METADATA, WHEEL, RECORD), built with the host's python3. */
function buildWheel(dir: string): { file: string; name: string; sha256: string } {
  const name = "tinypkg-1.0-py3-none-any.whl";
  const file = join(dir, name);
  execFileSync("python3", ["-c", `
import base64, hashlib, sys, zipfile
files = {
  "tinypkg/__init__.py": b"VALUE = 'tinypkg works'\\n",
  "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: tinypkg\\nVersion: 1.0\\n",
  "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\\nGenerator: sandqueue-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
}
record = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for path, data in files.items():
        z.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("tinypkg-1.0.dist-info/RECORD,,")
    z.writestr("tinypkg-1.0.dist-info/RECORD", "\\n".join(record) + "\\n")
`, file]);
  return { file, name, sha256: sha(readFileSync(file)) };
}

/** A PEP 503 simple index on 127.0.0.1 serving one wheel. */
async function startIndex(wheel: { file: string; name: string; sha256: string }): Promise<{ port: number; hits: string[]; close(): Promise<void> }> {
  const hits: string[] = [];
  const body = readFileSync(wheel.file);
  const server = http.createServer((req, res) => {
    hits.push(req.url ?? "");
    if (req.url === "/simple/tinypkg/") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(`<!DOCTYPE html><html><body><a href="/files/${wheel.name}#sha256=${wheel.sha256}">${wheel.name}</a></body></html>\n`);
    } else if (req.url === `/files/${wheel.name}`) {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": body.length });
      res.end(body);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    hits,
    close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
  };
}

/** An address of this host outside loopback, if it has one (the sandbox must not reach it either). */
function hostAddress(): string | undefined {
  return Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === "IPv4" && !i.internal)?.address;
}

describe("network policies through local sandboxes (real worker)", () => {
  const dir = tempDir("egress-local");
  const hostsFile = join(dir, "hosts");
  const queue = uniqueQueue("egl");
  const workRoot = tempDir("egress-work");
  const strictQueue = uniqueQueue("egls");
  let testCa: TestCa;
  let plain: Upstream;
  let secure: Upstream;
  let index: Awaited<ReturnType<typeof startIndex>>;
  let worker: WorkerRuntime;
  let strict: WorkerRuntime;
  let client: SandqueueClient;
  let strictClient: SandqueueClient;

  const egress = (over: Partial<EgressConfig> = {}): EgressConfig => ({
    ...DEFAULT_EGRESS_CONFIG,
    hostsFile,
    allowPrivate: true,
    upstreamCaFile: join(dir, "ca.pem"),
    ...over,
  });

  beforeAll(async () => {
    // The jobs' clients run from the host image (the host's /usr): these must be installed there.
    requireCommand("curl", "curl");
    requireCommand("pip3", "python3-pip");
    testCa = makeTestCa(dir, ["tls.test", "secret.test"]);
    plain = await startHttpUpstream();
    secure = await startTlsUpstream(testCa);
    index = await startIndex(buildWheel(dir));
    writeFileSync(
      hostsFile,
      ["plain.test", "api.test", "blocked.test", "other.test", "a.test", "b.test", "tls.test", "secret.test", "pypi.test"].map((n) => `127.0.0.1 ${n}`).join("\n") + "\n",
    );
    process.env.SANDQUEUE_SECRET_EGRESS_TOKEN = SECRET_VALUE;
    worker = await startTestWorker(queue, { egress: egress(), concurrency: 2, providerSettings: { workRoot } });
    // The operator's default: loopback and private addresses refused even for allowed hosts.
    strict = await startTestWorker(strictQueue, { egress: egress({ allowPrivate: false }), concurrency: 1 });
    client = testClient(queue);
    strictClient = testClient(strictQueue);
  }, 60_000);

  afterAll(async () => {
    delete process.env.SANDQUEUE_SECRET_EGRESS_TOKEN;
    await client?.close();
    await strictClient?.close();
    await worker?.close(0);
    await strict?.close(0);
    await Promise.all([plain?.close(), secure?.close(), index?.close()]);
  });

  const run = async (spec: Record<string, unknown>, c: SandqueueClient = client): Promise<JobResult> =>
    c.waitForResult((await c.enqueue({ image: "host", ...spec })).id, { timeoutMs: 90_000 });

  it("an allowed GET arrives byte-exact in curl and in Python's urllib, through the proxy variables alone", async () => {
    const n = 200_000;
    const url = `http://plain.test:${plain.port}/bytes/${n}`;
    const r = await run({
      kind: "shell",
      network: { default: "deny", egress: ["plain.test"] },
      script: [
        `curl -sSf -o curl.bin ${url}`,
        `python3 -c "import urllib.request,sys; sys.stdout.buffer.write(urllib.request.urlopen('${url}').read())" > py.bin`,
        "sha256sum curl.bin py.bin",
        'echo "proxy=$HTTP_PROXY"',
        // And the other way: a 3 MB upload through the bridge's backpressure.
        "head -c 3000000 /dev/urandom > up.bin",
        `curl -sSf -X POST -H 'content-type: application/octet-stream' --data-binary @up.bin -o /dev/null http://plain.test:${plain.port}/upload`,
      ].join(" && "),
    });
    expect(r.status, r.stderr).toBe("succeeded");
    const want = sha(testBytes(n));
    expect(r.stdout).toContain(`${want}  curl.bin`);
    expect(r.stdout).toContain(`${want}  py.bin`);
    expect(r.stdout).toContain("proxy=http://127.0.0.1:3128");
    expect(plain.seen.find((s) => s.url === "/upload")).toMatchObject({ method: "POST", bodyBytes: 3_000_000 });
  });

  it("a denied host, method and path each get 403 naming the rule", async () => {
    const base = `http://api.test:${plain.port}`;
    const r = await run({
      kind: "shell",
      network: {
        default: "deny",
        egress: [{ host: "api.test", methods: ["GET"], paths: ["/v1/*"] }, { host: "blocked.test", action: "deny" }],
      },
      script: [
        `curl -s -w ' %{http_code}\\n' ${base}/v1/ok -o /dev/null`,
        `curl -s -w ' %{http_code}\\n' http://other.test:${plain.port}/x`,
        `curl -s -w ' %{http_code}\\n' http://blocked.test:${plain.port}/x`,
        `curl -s -w ' %{http_code}\\n' -X POST ${base}/v1/ok`,
        `curl -s -w ' %{http_code}\\n' ${base}/v2/no`,
      ].join("; "),
    });
    expect(r.status, r.stderr).toBe("succeeded");
    // Each refusal: the proxy's one-line body, then curl's status code.
    const lines = r.stdout.split("\n");
    expect(lines[0]).toBe(" 200");
    const port = plain.port;
    expect(lines.slice(1)).toEqual([
      `sandqueue egress proxy: GET http://other.test:${port}/x denied by network.default "deny" (no rule of network.egress matches)`,
      " 403",
      `sandqueue egress proxy: GET http://blocked.test:${port}/x denied by network.egress[1] {"host":"blocked.test","action":"deny"}`,
      " 403",
      // A rule whose methods or paths do not match is no match: the next rule, here the default, decides.
      `sandqueue egress proxy: POST http://api.test:${port}/v1/ok denied by network.default "deny" (no rule of network.egress matches)`,
      " 403",
      `sandqueue egress proxy: GET http://api.test:${port}/v2/no denied by network.default "deny" (no rule of network.egress matches)`,
      " 403",
      "",
    ]);
    // Only the allowed request reached the upstream.
    expect(plain.seen.filter((s) => s.headers.host?.startsWith("api.test:") && (s.url.startsWith("/v2") || s.method === "POST"))).toEqual([]);
  });

  it("130 requests against a 120/min rule: the excess get 429 with Retry-After", async () => {
    const url = `http://api.test:${plain.port}/v1/rate`;
    const r = await run({
      kind: "shell",
      network: { default: "deny", egress: [{ host: "api.test", ratePerMinute: 120 }] },
      // One curl, 130 URLs on one kept-alive connection: fast enough that the bucket barely refills.
      script: `curl -s -D headers.txt -w '%{http_code}\\n' $(for i in $(seq 130); do printf -- '-o /dev/null %s ' ${url}; done) | sort | uniq -c; grep -ic '^retry-after: [1-9]' headers.txt`,
    });
    expect(r.status, r.stderr).toBe("succeeded");
    const counts = Object.fromEntries([...r.stdout.matchAll(/^\s*(\d+) (\d{3})$/gm)].map((m) => [m[2], Number(m[1])]));
    expect(counts["200"]! + counts["429"]!).toBe(130);
    expect(counts["200"]).toBeGreaterThanOrEqual(120);
    expect(counts["429"]).toBeGreaterThanOrEqual(5);
    const retryAfter = Number(r.stdout.trim().split("\n").at(-1));
    expect(retryAfter).toBe(counts["429"]);
  });

  it("without the proxy nothing is reachable: not the upstream's address, not the host's", async () => {
    const other = hostAddress();
    const r = await run({
      kind: "shell",
      network: { default: "deny", egress: ["plain.test"] },
      script: [
        `python3 - <<'EOF'`,
        "import socket",
        `for addr in [("127.0.0.1", ${plain.port})${other ? `, ("${other}", ${plain.port})` : ""}]:`,
        "    try:",
        "        socket.create_connection(addr, timeout=3).close()",
        "        print('connected', addr)",
        "    except OSError as e:",
        "        print('refused', addr, type(e).__name__)",
        "EOF",
        `curl -sS --noproxy '*' -o /dev/null http://127.0.0.1:${plain.port}/direct; echo "curl=$?"`,
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1",
      ].join("\n"),
    });
    expect(r.status, r.stderr).toBe("succeeded");
    expect(r.stdout).not.toContain("connected");
    expect(r.stdout).toContain(`refused ('127.0.0.1', ${plain.port}) ConnectionRefusedError`);
    if (other) expect(r.stdout).toMatch(new RegExp(`refused \\('${other.replaceAll(".", "\\.")}', ${plain.port}\\) OSError`));
    expect(r.stdout).toContain("curl=7");
    // The namespace holds loopback only.
    expect(r.stdout.trim().split("\n").at(-1)!.trim()).toBe("lo");
    expect(plain.seen.some((s) => s.url === "/direct")).toBe(false);
  });

  it("an allowed host resolving to a loopback address is refused unless the operator allows private addresses", async () => {
    const spec = {
      kind: "shell",
      network: { default: "deny", egress: ["plain.test"] },
      script: `curl -s -w ' %{http_code}' http://plain.test:${plain.port}/private-ok`,
    };
    const refused = await run(spec, strictClient);
    expect(refused.status).toBe("succeeded");
    expect(refused.stdout).toMatch(/plain\.test resolves to no address the proxy may connect to: 127\.0\.0\.1 is a loopback address.*SANDQUEUE_EGRESS_ALLOW_PRIVATE=true\)\n 403$/);
    const allowed = await run(spec);
    expect(allowed.stdout).toMatch(/"url":"\/private-ok".* 200$/);
  });

  it("CONNECT tunnels TLS end to end: the job verifies the upstream's own certificate", async () => {
    const n = 100_000;
    const r = await run({
      kind: "shell",
      network: { default: "deny", egress: ["tls.test"] },
      files: { "test-ca.pem": testCa.caPem },
      // Trusting only the upstream's CA: a certificate made by the proxy would fail here.
      script: `curl -sSf --cacert test-ca.pem -o tls.bin https://tls.test:${secure.port}/bytes/${n} && sha256sum tls.bin && curl -sS -o /dev/null -w '%{ssl_verify_result} %{http_code}\\n' --cacert test-ca.pem https://tls.test:${secure.port}/bytes/1; curl -sS --cacert test-ca.pem https://other.test:${secure.port}/bytes/1 2>&1; echo "denied=$?"`,
    });
    expect(r.status, r.stderr).toBe("succeeded");
    expect(r.stdout).toContain(`${sha(testBytes(n))}  tls.bin`);
    expect(r.stdout).toContain("0 200");
    // A CONNECT to a host the policy does not allow is refused before any byte goes out.
    expect(r.stdout).toMatch(/CONNECT tunnel failed, response 403\ndenied=56\n$/);
    expect(secure.seen.some((s) => s.headers.host?.startsWith("other.test"))).toBe(false);
    expect(secure.seen.some((s) => s.url === `/bytes/${n}`)).toBe(true);
  });

  it("pip installs a package from a local index the policy allows (and not from one it does not)", async () => {
    const pip = `python3 -m pip install --disable-pip-version-check --no-cache-dir --break-system-packages --target lib --trusted-host pypi.test --trusted-host other.test --index-url`;
    const r = await run({
      kind: "shell",
      network: { default: "deny", egress: ["pypi.test"] },
      env: { HOME: "/tmp" },
      script: `${pip} http://pypi.test:${index.port}/simple/ tinypkg && python3 -c "import sys; sys.path.insert(0, 'lib'); import tinypkg; print(tinypkg.VALUE)"`,
    });
    expect(r.status, r.stderr).toBe("succeeded");
    expect(r.stdout).toContain("Successfully installed tinypkg-1.0");
    expect(r.stdout.trim().split("\n").at(-1)).toBe("tinypkg works");
    expect(index.hits).toContain("/files/tinypkg-1.0-py3-none-any.whl");
    const hits = index.hits.length;
    const denied = await run({
      kind: "shell",
      network: { default: "deny", egress: ["pypi.test"] },
      env: { HOME: "/tmp" },
      script: `${pip} http://other.test:${index.port}/simple/ --retries 0 -vvv tinypkg`,
    });
    expect(denied.status).toBe("failed");
    expect(`${denied.stdout}${denied.stderr}`).toContain(`Could not fetch URL http://other.test:${index.port}/simple/tinypkg/: 403 Client Error: Forbidden`);
    expect(denied.stderr).toContain("No matching distribution found for tinypkg");
    expect(index.hits.length).toBe(hits);
  });

  it("a bound secret reaches the upstream's header, never the sandbox's environment, files, output or Redis", async () => {
    const before = { plain: plain.seen.length, secure: secure.seen.length };
    const r = await run({
      kind: "shell",
      network: {
        default: "deny",
        egress: ["secret.test", "plain.test"],
        secrets: [{ name: "EGRESS_TOKEN", hosts: ["secret.test"], header: "Authorization", format: "Bearer {}" }],
      },
      script: [
        // Opened TLS (the worker's CA, trusted through SSL_CERT_FILE and friends); plain HTTP would carry the secret in clear: refused.
        `curl -s -w ' %{http_code}\\n' http://secret.test:${plain.port}/bytes/8 >&2`,
        `curl -sSf -o /dev/null https://secret.test:${secure.port}/bytes/9`,
        `curl -sSf -o /dev/null http://plain.test:${plain.port}/bytes/10`,
        // Everything the job can read: its environment, its processes', its files.
        "env > env.txt; cat /proc/self/environ | tr '\\0' '\\n' >> env.txt",
        `grep -rl -- '${SECRET_VALUE.slice(0, 12)}' /workspace /tmp /sandqueue-egress /etc 2>/dev/null; echo "grep done"`,
        "cat env.txt",
      ].join("\n"),
    });
    expect(r.status, r.stderr).toBe("succeeded");
    expect(r.stdout).toContain("grep done");
    // Masking would print *** where the value appeared: neither the value nor a mask is there.
    expect(`${r.stdout}${r.stderr}`).not.toContain(SECRET_VALUE);
    expect(r.stdout).not.toContain("***");
    expect(r.stdout).not.toContain("EGRESS_TOKEN");
    expect(r.stdout.split("\n")[0]).toBe("grep done");
    const http8 = plain.seen.slice(before.plain).find((s) => s.url === "/bytes/8");
    const tls9 = secure.seen.slice(before.secure).find((s) => s.url === "/bytes/9");
    const other = plain.seen.slice(before.plain).find((s) => s.url === "/bytes/10");
    expect(http8).toBeUndefined();
    expect(r.stderr).toMatch(/secret\.test has a bound secret \(EGRESS_TOKEN\), which is sent over HTTPS only: use https:\/\/\n 403\n$/);
    expect(tls9?.headers.authorization).toBe(`Bearer ${SECRET_VALUE}`);
    expect(other?.headers.authorization).toBeUndefined();
    const redis = new Redis(REDIS_URL);
    try {
      const keys = await redis.keys(`sandq:${queue}:*`);
      expect(keys.length).toBeGreaterThan(0);
      for (const key of keys) {
        const type = await redis.type(key);
        const dump =
          type === "hash" ? JSON.stringify(await redis.hgetall(key))
          : type === "string" ? String(await redis.get(key))
          : type === "list" ? JSON.stringify(await redis.lrange(key, 0, -1))
          : type === "zset" ? JSON.stringify(await redis.zrange(key, 0, -1))
          : type === "stream" ? JSON.stringify(await redis.xrange(key, "-", "+"))
          : type === "set" ? JSON.stringify(await redis.smembers(key))
          : "";
        expect(dump, key).not.toContain(SECRET_VALUE);
      }
    } finally {
      redis.disconnect();
    }
  });

  it("the bridge is out of the job's reach: invisible, unkillable, gone with the sandbox", async () => {
    const url = `http://plain.test:${plain.port}/bytes/64`;
    const r = await run({
      kind: "shell",
      network: { default: "deny", egress: ["plain.test"] },
      script: `python3 - <<'EOF'
import glob, os, signal, urllib.request
seen = [open(p, "rb").read().replace(b"\\0", b" ").decode() for p in glob.glob("/proc/[0-9]*/cmdline")]
print("bridge visible:", any("egress-bridge" in c for c in seen))
ancestors, pid = set(), os.getpid()
while pid > 1:
    ancestors.add(pid)
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
for p in glob.glob("/proc/[0-9]*"):
    if int(p[6:]) not in ancestors:
        try:
            os.kill(int(p[6:]), signal.SIGKILL)  # every process this job can see but its own line
        except OSError:
            pass
print("after kill:", len(urllib.request.urlopen("${url}").read()))
EOF`,
    });
    expect(r.status, r.stderr).toBe("succeeded");
    expect(r.stdout).toBe("bridge visible: False\nafter kill: 64\n");
    // No bridge of this worker's sandboxes outlives its job.
    const bridges = execFileSync("ps", ["-eo", "args"], { encoding: "utf8" }).split("\n").filter((l) => l.includes("egress-bridge.py") && l.includes(workRoot));
    expect(bridges).toEqual([]);
  });

  it("two concurrent jobs' policies never mix", async () => {
    const job = (mine: string, theirs: string) => ({
      kind: "shell",
      network: { default: "deny", egress: [`${mine}.test`] },
      // Interleaved with the other job for a few seconds: each request is decided by its own job's policy.
      script: `date +%s.%N >&2; for i in $(seq 20); do curl -s -o /dev/null -w '${mine}:%{http_code} ' http://${mine}.test:${plain.port}/bytes/3; curl -s -o /dev/null -w '${theirs}:%{http_code} ' http://${theirs}.test:${plain.port}/bytes/3; sleep 0.1; done; date +%s.%N >&2`,
    });
    const [a, b] = await Promise.all([run(job("a", "b")), run(job("b", "a"))]);
    for (const [r, mine, theirs] of [[a, "a", "b"], [b, "b", "a"]] as const) {
      expect(r.status, r.stderr).toBe("succeeded");
      const codes = r.stdout.trim().split(" ");
      expect(codes.filter((c) => c === `${mine}:200`)).toHaveLength(20);
      expect(codes.filter((c) => c === `${theirs}:403`)).toHaveLength(20);
    }
    // They did run at the same time: each started before the other ended.
    const [aStart, aEnd] = a.stderr.trim().split("\n").map(Number) as [number, number];
    const [bStart, bEnd] = b.stderr.trim().split("\n").map(Number) as [number, number];
    expect(aStart).toBeLessThan(bEnd);
    expect(bStart).toBeLessThan(aEnd);
  });
});
