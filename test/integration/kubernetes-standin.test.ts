/**
 * The Kubernetes stand-in (standins/kubernetes) checked with clients it did
 * not write: @kubernetes/client-node's own CoreV1Api, NetworkingV1Api,
 * Watch and Exec classes, and Debian's kubectl 1.20 (package
 * kubernetes-client; `npm run setup` provides it). Behind the API, every
 * pod is a real bubblewrap sandbox of the local provider, so exec output,
 * exit codes, memory kills and deadlines are real. Needs root, bubblewrap
 * and that kubectl; fails, never skips, without them.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm, rmdir, writeFile } from "node:fs/promises";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { PassThrough, Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { CoreV1Api, Exec, KubeConfig, NetworkingV1Api, Watch, type V1Pod, type V1Status } from "@kubernetes/client-node";
import { LocalProvider } from "../../providers/local/index.js";
import { KubernetesStandin, V4, type FaultSpec } from "../../standins/kubernetes/index.js";
import { requireCommand } from "../support/harness.js";

const run = promisify(execFile);
const NS = "sandboxes";
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

let tmp: string;
let provider: LocalProvider;
let standin: KubernetesStandin;
let kc: KubeConfig;
let core: CoreV1Api;
let kubeconfigFile: string;
const cgroupParent = `sandqueue-k8s-test-${process.pid}`;

/** Debian's kubectl 1.20: where setup unpacked it, or /usr/bin/kubectl when that is the Debian package. */
async function debianKubectl(): Promise<string> {
  for (const candidate of [path.join(REPO, ".sandqueue/kubernetes-client/usr/bin/kubectl"), "/usr/bin/kubectl"]) {
    if (!existsSync(candidate)) continue;
    const { stdout } = await run(candidate, ["version", "--client", "--short"]).catch(() => ({ stdout: "" }));
    if (stdout.includes("v1.20.")) return candidate;
  }
  throw new Error("Debian's kubectl 1.20 not found: install the Debian package 'kubernetes-client' (npm run setup does, scripts/setup.d/kubectl.sh)");
}

/** A request with the stand-in's CA, token optional: for what no client library call shows (headers, 401). */
function raw(method: string, pathAndQuery: string, opts: { token?: boolean; body?: unknown; contentType?: string } = {}): Promise<{ code: number; headers: Record<string, unknown>; body: any }> {
  const url = new URL(pathAndQuery, standin.url);
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method,
        ca: standin.caPem!,
        headers: {
          ...(opts.token === false ? {} : { Authorization: `Bearer ${standin.token}` }),
          ...(opts.body === undefined ? {} : { "Content-Type": opts.contentType ?? "application/json" }),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          resolve({ code: res.statusCode ?? 0, headers: res.headers, body: text ? JSON.parse(text) : null });
        });
      },
    );
    req.on("error", reject);
    req.end(opts.body === undefined ? undefined : JSON.stringify(opts.body));
  });
}

/** The API's answer to a failed client-node call: its HTTP code and Status body. */
async function apiError(call: Promise<unknown>): Promise<{ code: number; status: any }> {
  try {
    await call;
  } catch (err) {
    const e = err as { code?: number; body?: unknown };
    return { code: e.code ?? 0, status: typeof e.body === "string" ? JSON.parse(e.body) : e.body };
  }
  throw new Error("the call succeeded");
}

function pod(name: string, opts: { labels?: Record<string, string>; memory?: string; deadline?: number; image?: string } = {}): V1Pod {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, labels: opts.labels ?? {} },
    spec: {
      restartPolicy: "Never",
      ...(opts.deadline ? { activeDeadlineSeconds: opts.deadline } : {}),
      containers: [
        {
          name: "main",
          image: opts.image ?? "python:3.12-slim",
          command: ["sleep", "infinity"],
          workingDir: "/workspace",
          env: [{ name: "GREETING", value: "hello from the pod" }],
          ...(opts.memory ? { resources: { limits: { memory: opts.memory } } } : {}),
        },
      ],
    },
  };
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const phaseOf = async (name: string) => (await core.readNamespacedPod({ name, namespace: NS })).status?.phase;
const waitRunning = (name: string) => waitFor(`${name} Running`, async () => ((await phaseOf(name)) === "Running" ? true : undefined));
const waitGone = (name: string) =>
  waitFor(`${name} gone`, async () => ((await apiError(core.readNamespacedPod({ name, namespace: NS }))).code === 404 ? true : undefined));

interface ExecRun {
  stdout: string;
  stderr: string;
  status: V1Status | null;
  closeCode: number;
  protocol: string;
}

/** client-node's own Exec: stdout and stderr apart, the status from its callback, the close code of its socket. */
async function execIn(config: KubeConfig, name: string, argv: string[], stdin?: string, onOpen?: (close: () => void) => void): Promise<ExecRun> {
  const out = new PassThrough();
  const err = new PassThrough();
  const chunks = { out: [] as Buffer[], err: [] as Buffer[] };
  out.on("data", (c: Buffer) => chunks.out.push(c));
  err.on("data", (c: Buffer) => chunks.err.push(c));
  let status: V1Status | null = null;
  const ws = await new Exec(config).exec(NS, name, "main", argv, out, err, stdin === undefined ? null : Readable.from([Buffer.from(stdin)]), false, (s) => {
    status = s;
  });
  const closed = new Promise<number>((resolve) => ws.on("close", (code: number) => resolve(code)));
  onOpen?.(() => ws.close());
  const closeCode = await closed;
  return { stdout: Buffer.concat(chunks.out).toString(), stderr: Buffer.concat(chunks.err).toString(), status, closeCode, protocol: ws.protocol };
}

const exitCodeOf = (s: V1Status | null): number | null => {
  if (s === null) return null;
  if (s.status === "Success") return 0;
  return Number(s.details?.causes?.find((c) => c.reason === "ExitCode")?.message);
};

beforeAll(async () => {
  requireCommand("bwrap", "bubblewrap");
  tmp = await mkdtemp(path.join(os.tmpdir(), "sandqueue-k8s-standin-"));
  provider = new LocalProvider({ workRoot: path.join(tmp, "work"), cgroupParent });
  standin = await KubernetesStandin.start({
    provider,
    namespaces: [NS],
    images: { "python:3.12-slim": "host" },
    defaultImage: null,
    v4StdinIdleMs: 100,
  });
  kubeconfigFile = path.join(tmp, "kubeconfig");
  await standin.writeKubeconfig(kubeconfigFile, NS);
  kc = new KubeConfig();
  kc.loadFromFile(kubeconfigFile);
  core = kc.makeApiClient(CoreV1Api);
});

afterAll(async () => {
  await standin?.stop();
  await provider?.close();
  for (const dir of provider?.cgroupParentDirs ?? []) await rmdir(dir).catch(() => undefined);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe("Kubernetes stand-in through @kubernetes/client-node", () => {
  it("creates pods (Pending, then Running), lists them by label selector, watches and deletes them as the API does", async () => {
    const events: Array<{ type: string; phase?: string; deleting: boolean }> = [];
    const watch = await new Watch(kc).watch(
      `/api/v1/namespaces/${NS}/pods`,
      { labelSelector: "suite=crud" },
      (type: string, obj: V1Pod) => events.push({ type, phase: obj.status?.phase, deleting: !!obj.metadata?.deletionTimestamp }),
      () => undefined,
    );
    const created = await core.createNamespacedPod({
      namespace: NS,
      body: pod("crud-a", { labels: { suite: "crud", app: "web", env: "prod", gpu: "yes" } }),
    });
    expect(created.metadata?.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(Number(created.metadata?.resourceVersion)).toBeGreaterThan(0);
    expect(created.metadata?.creationTimestamp).toBeInstanceOf(Date);
    expect(created.status?.phase).toBe("Pending");
    expect(created.spec?.restartPolicy).toBe("Never");
    expect(created.spec?.containers[0]?.terminationMessagePath).toBe("/dev/termination-log");
    await core.createNamespacedPod({ namespace: NS, body: pod("crud-b", { labels: { suite: "crud", app: "db", env: "dev" } }) });
    const generated = await core.createNamespacedPod({
      namespace: NS,
      body: { ...pod(""), metadata: { generateName: "crud-gen-", labels: { suite: "crud", app: "web", env: "test" } } },
    });
    expect(generated.metadata?.name).toMatch(/^crud-gen-[a-z0-9]{5}$/);
    await waitRunning("crud-a");

    const names = async (labelSelector: string) =>
      (await core.listNamespacedPod({ namespace: NS, labelSelector })).items.map((p) => p.metadata?.name).sort();
    const gen = generated.metadata!.name!;
    expect(await names("suite=crud,app=web")).toEqual(["crud-a", gen].sort());
    expect(await names("suite=crud,app!=web")).toEqual(["crud-b"]);
    expect(await names("suite=crud,env in (prod,dev)")).toEqual(["crud-a", "crud-b"]);
    expect(await names("suite=crud,env notin (prod)")).toEqual(["crud-b", gen].sort());
    expect(await names("suite=crud,gpu")).toEqual(["crud-a"]);
    expect(await names("suite=crud,!gpu")).toEqual(["crud-b", gen].sort());
    expect(await names("suite=nothing")).toEqual([]);

    // A running pod is deleted gracefully: the answer is the pod, terminating; it is gone once its sandbox is.
    const deleted = (await core.deleteNamespacedPod({ name: "crud-a", namespace: NS })) as V1Pod;
    expect(deleted.kind).toBe("Pod");
    expect(deleted.metadata?.deletionTimestamp).toBeDefined();
    await waitGone("crud-a");
    await core.deleteNamespacedPod({ name: "crud-b", namespace: NS, gracePeriodSeconds: 0 });
    await core.deleteNamespacedPod({ name: gen, namespace: NS, gracePeriodSeconds: 0 });
    expect(await names("suite=crud")).toEqual([]);
    await waitFor("DELETED events", async () => (events.filter((e) => e.type === "DELETED").length === 3 ? true : undefined));
    watch.abort();

    expect(events[0]).toMatchObject({ type: "ADDED", phase: "Pending" });
    expect(events.some((e) => e.type === "MODIFIED" && e.phase === "Running")).toBe(true);
    expect(events.some((e) => e.type === "MODIFIED" && e.deleting)).toBe(true);
  });

  it("answers with the API's Status objects: 404, 409, 422, 400, 401, 429 with Retry-After", async () => {
    const missing = await apiError(core.readNamespacedPod({ name: "no-such-pod", namespace: NS }));
    expect(missing.code).toBe(404);
    expect(missing.status).toMatchObject({
      kind: "Status",
      apiVersion: "v1",
      status: "Failure",
      reason: "NotFound",
      message: 'pods "no-such-pod" not found',
      details: { name: "no-such-pod", kind: "pods" },
      code: 404,
    });

    await core.createNamespacedPod({ namespace: NS, body: pod("dup") });
    const dup = await apiError(core.createNamespacedPod({ namespace: NS, body: pod("dup") }));
    expect(dup.code).toBe(409);
    expect(dup.status).toMatchObject({ reason: "AlreadyExists", message: 'pods "dup" already exists', details: { name: "dup", kind: "pods" } });
    await core.deleteNamespacedPod({ name: "dup", namespace: NS, gracePeriodSeconds: 0 });

    const noContainers = await apiError(core.createNamespacedPod({ namespace: NS, body: { metadata: { name: "empty" }, spec: { containers: [] } } }));
    expect(noContainers.code).toBe(422);
    expect(noContainers.status).toMatchObject({
      reason: "Invalid",
      message: 'Pod "empty" is invalid: spec.containers: Required value',
      details: { name: "empty", kind: "Pod", causes: [{ reason: "FieldValueRequired", field: "spec.containers" }] },
    });
    const badName = await apiError(core.createNamespacedPod({ namespace: NS, body: pod("Bad_Name") }));
    expect(badName.code).toBe(422);
    expect(badName.status.details.causes[0]).toMatchObject({ reason: "FieldValueInvalid", field: "metadata.name" });
    expect(badName.status.message).toContain("a lowercase RFC 1123 subdomain");
    const longLabel = await apiError(core.createNamespacedPod({ namespace: NS, body: pod("long-label", { labels: { job: "x".repeat(64) } }) }));
    expect(longLabel.code).toBe(422);
    expect(longLabel.status.details.causes[0]).toMatchObject({ field: "metadata.labels", message: expect.stringContaining("must be no more than 63 characters") });
    const wrongNs = await apiError(core.createNamespacedPod({ namespace: "no-such-ns", body: pod("x") }));
    expect(wrongNs.code).toBe(404);
    expect(wrongNs.status.message).toBe('namespaces "no-such-ns" not found');

    const badSelector = await raw("GET", `/api/v1/namespaces/${NS}/pods?labelSelector=${encodeURIComponent("a in b")}`);
    expect(badSelector.code).toBe(400);
    expect(badSelector.body).toMatchObject({ kind: "Status", reason: "BadRequest", code: 400 });
    const anonymous = await raw("GET", `/api/v1/namespaces/${NS}/pods`, { token: false });
    expect(anonymous.code).toBe(401);
    expect(anonymous.body).toMatchObject({ kind: "Status", reason: "Unauthorized", code: 401 });

    // Faults armed over the admin endpoint: the next list is refused with 429 and Retry-After, the one after served.
    const fault: FaultSpec = { match: { verb: "list", resource: "pods" }, action: { type: "fail", code: 429, retryAfterSeconds: 2 } };
    expect((await raw("POST", "/standin/faults", { body: fault })).code).toBe(201);
    const limited = await apiError(core.listNamespacedPod({ namespace: NS }));
    expect(limited.code).toBe(429);
    expect(limited.status).toMatchObject({ reason: "TooManyRequests", details: { retryAfterSeconds: 2 } });
    expect((await core.listNamespacedPod({ namespace: NS })).kind).toBe("PodList");
    standin.faults.add({ match: { verb: "create", resource: "pods" }, action: { type: "fail", code: 500 }, count: 2 });
    const first = await raw("POST", `/api/v1/namespaces/${NS}/pods`, { body: pod("flaky") });
    expect(first.code).toBe(500);
    expect(first.body).toMatchObject({ reason: "InternalError" });
    const retryAfter = standin.faults.add({ match: { verb: "get" }, action: { type: "fail", code: 503, retryAfterSeconds: 1 } });
    const unavailable = await raw("GET", `/api/v1/namespaces/${NS}/pods/flaky`);
    expect(unavailable.code).toBe(503);
    expect(unavailable.headers["retry-after"]).toBe("1");
    expect(standin.faults.list().map((f) => f.id)).not.toContain(retryAfter.id);
    expect((await raw("POST", `/api/v1/namespaces/${NS}/pods`, { body: pod("flaky") })).code).toBe(500);
    expect((await raw("POST", `/api/v1/namespaces/${NS}/pods`, { body: pod("flaky") })).code).toBe(201);
    await core.deleteNamespacedPod({ name: "flaky", namespace: NS, gracePeriodSeconds: 0 });
  });

  it("patches and replaces pods as the API allows, deletes collections by selector, and deletes namespaces with their pods", async () => {
    await core.createNamespacedPod({ namespace: NS, body: pod("patched", { labels: { suite: "patch" } }) });
    // client-node sends JSON Patch; kubectl's strategic and RFC 7386 merge patches are served too.
    const adopted = await core.patchNamespacedPod({
      name: "patched",
      namespace: NS,
      body: [{ op: "add", path: "/metadata/labels/sandqueue.io~1job", value: "job-1" }],
    });
    expect(adopted.metadata?.labels).toEqual({ suite: "patch", "sandqueue.io/job": "job-1" });
    const merged = await raw("PATCH", `/api/v1/namespaces/${NS}/pods/patched`, {
      contentType: "application/merge-patch+json",
      body: { metadata: { labels: { "sandqueue.io/job": null, extra: "1" }, annotations: { note: "free text" } } },
    });
    expect(merged.code).toBe(200);
    expect(merged.body.metadata.labels).toEqual({ suite: "patch", extra: "1" });
    const specChange = await raw("PATCH", `/api/v1/namespaces/${NS}/pods/patched`, {
      contentType: "application/strategic-merge-patch+json",
      body: { spec: { restartPolicy: "Always" } },
    });
    expect(specChange.code).toBe(422);
    expect(specChange.body.details.causes[0]).toMatchObject({ reason: "FieldValueForbidden", field: "spec" });
    const stale = await apiError(core.replaceNamespacedPod({ name: "patched", namespace: NS, body: { ...adopted, metadata: { ...adopted.metadata, labels: {} } } }));
    expect(stale.code).toBe(409);
    expect(stale.status).toMatchObject({ reason: "Conflict", message: expect.stringContaining("the object has been modified") });

    await core.createNamespacedPod({ namespace: NS, body: pod("patched-2", { labels: { suite: "patch" } }) });
    const removed = await core.deleteCollectionNamespacedPod({ namespace: NS, labelSelector: "suite=patch", gracePeriodSeconds: 0 });
    // The API answers a deletecollection with the list of what it deleted (its OpenAPI says Status; the generic store returns the list).
    expect(removed.kind).toBe("PodList");
    expect((await core.listNamespacedPod({ namespace: NS, labelSelector: "suite=patch" })).items).toEqual([]);

    await core.createNamespace({ body: { metadata: { name: "short-lived" } } });
    await core.createNamespacedPod({ namespace: "short-lived", body: pod("inside") });
    const terminating = await core.deleteNamespace({ name: "short-lived" });
    expect((terminating as { status?: { phase?: string } }).status?.phase).toBe("Terminating");
    await waitFor("namespace gone", async () => ((await apiError(core.readNamespace({ name: "short-lived" }))).code === 404 ? true : undefined));
    expect((await apiError(core.readNamespacedPod({ name: "inside", namespace: "short-lived" }))).code).toBe(404);
  });

  it("stores NetworkPolicies (networking.k8s.io/v1) with the API's defaults", async () => {
    const net = kc.makeApiClient(NetworkingV1Api);
    await net.createNamespacedNetworkPolicy({
      namespace: NS,
      body: { metadata: { name: "default-deny" }, spec: { podSelector: {}, policyTypes: ["Ingress", "Egress"] } },
    });
    const got = await net.readNamespacedNetworkPolicy({ name: "default-deny", namespace: NS });
    expect(got.spec?.policyTypes).toEqual(["Ingress", "Egress"]);
    expect((await net.listNamespacedNetworkPolicy({ namespace: NS })).items.map((p) => p.metadata?.name)).toEqual(["default-deny"]);
    const missing = await apiError(net.readNamespacedNetworkPolicy({ name: "nope", namespace: NS }));
    expect(missing.status).toMatchObject({ reason: "NotFound", details: { group: "networking.k8s.io", kind: "networkpolicies" } });
  });

  it("execs with client-node's Exec over v5: stdout and stderr apart, stdin closed by the client, exit codes from the status channel", async () => {
    await core.createNamespacedPod({ namespace: NS, body: pod("exec") });
    await waitRunning("exec");
    const failing = await execIn(kc, "exec", ["sh", "-c", 'printf "to stdout"; printf "to stderr" >&2; echo "$GREETING in $PWD"; exit 7']);
    expect(failing.protocol).toBe("v5.channel.k8s.io");
    expect(failing.stdout).toBe("to stdouthello from the pod in /workspace\n");
    expect(failing.stderr).toBe("to stderr");
    expect(failing.status).toMatchObject({ status: "Failure", reason: "NonZeroExitCode" });
    expect(exitCodeOf(failing.status)).toBe(7);

    // stdin reaches the process, with end-of-file when the client's stream ends (the v5 close frame).
    const payload = "line 1\nline 2\n\u00e9\u0000binary\n";
    const echoed = await execIn(kc, "exec", ["sh", "-c", "cat; echo EOF"], payload);
    expect(echoed.stdout).toBe(`${payload}EOF\n`);
    expect(echoed.status).toMatchObject({ status: "Success" });
    expect(exitCodeOf(echoed.status)).toBe(0);

    // The workspace outlives an exec; the next exec sees it.
    await execIn(kc, "exec", ["sh", "-c", "echo kept > /workspace/file"]);
    expect((await execIn(kc, "exec", ["cat", "/workspace/file"])).stdout).toBe("kept\n");
  });

  it("negotiates v4.channel.k8s.io with client-node's Exec when the server offers only v4", async () => {
    const v4 = await KubernetesStandin.start({ provider, namespaces: [NS], images: { "python:3.12-slim": "host" }, execProtocols: [V4], v4StdinIdleMs: 100 });
    try {
      const file = path.join(tmp, "kubeconfig-v4");
      await v4.writeKubeconfig(file, NS);
      const kc4 = new KubeConfig();
      kc4.loadFromFile(file);
      const core4 = kc4.makeApiClient(CoreV1Api);
      await core4.createNamespacedPod({ namespace: NS, body: pod("v4") });
      await waitFor("v4 pod Running", async () => ((await core4.readNamespacedPod({ name: "v4", namespace: NS })).status?.phase === "Running" ? true : undefined));
      const r = await execIn(kc4, "v4", ["sh", "-c", "echo out; echo err >&2; exit 3"]);
      expect(r.protocol).toBe(V4);
      expect([r.stdout, r.stderr, exitCodeOf(r.status)]).toEqual(["out\n", "err\n", 3]);

      // v4 cannot close stdin (client-node closes the whole socket instead): frame by frame with ws, the
      // command starts once stdin has been quiet for v4StdinIdleMs and reads what came.
      const ws = new WebSocket(`${v4.url.replace("https", "wss")}/api/v1/namespaces/${NS}/pods/v4/exec?command=wc&command=-c&stdin=true&stdout=true`, [V4], {
        ca: v4.caPem!,
        headers: { Authorization: `Bearer ${v4.token}` },
      });
      const frames: Buffer[] = [];
      ws.on("message", (m: Buffer) => frames.push(m));
      await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
      ws.send(Buffer.concat([Buffer.from([0]), Buffer.from("12345")]));
      ws.send(Buffer.concat([Buffer.from([0]), Buffer.from("678")]));
      await new Promise((resolve) => ws.once("close", resolve));
      expect(frames.map((f) => [f[0], f.subarray(1).toString()])).toEqual([
        [1, "8\n"],
        [3, JSON.stringify({ metadata: {}, status: "Success" })],
      ]);
    } finally {
      await v4.stop();
    }
  });

  it("runs each pod in a real bwrap sandbox: seccomp, no network, a memory limit kill reported as exit 137 and OOMKilled", async () => {
    await core.createNamespacedPod({ namespace: NS, body: pod("real", { memory: "64Mi" }) });
    await waitRunning("real");
    const live = await core.readNamespacedPod({ name: "real", namespace: NS });
    const sandboxId = live.status?.containerStatuses?.[0]?.containerID?.replace("standin://", "");
    expect(sandboxId).toMatch(/^sq-/);
    expect((await provider.resources()).some((r) => r.includes(sandboxId!))).toBe(true);

    const status = await execIn(kc, "real", ["cat", "/proc/self/status"]);
    expect(status.stdout).toMatch(/^Seccomp:\s+2$/m);
    expect(status.stdout).toMatch(/^NoNewPrivs:\s+1$/m);
    const hostStatus = await readFile("/proc/self/status", "utf8");
    expect(hostStatus).not.toMatch(/^Seccomp:\s+2$/m);
    // Interfaces, not traffic: the sandbox has loopback only, the host more.
    const ifaces = (text: string) => text.split("\n").slice(2).map((l) => l.split(":")[0]!.trim()).filter(Boolean);
    expect(ifaces((await execIn(kc, "real", ["cat", "/proc/net/dev"])).stdout)).toEqual(["lo"]);
    expect(ifaces(await readFile("/proc/net/dev", "utf8")).length).toBeGreaterThan(1);

    const oom = await execIn(kc, "real", ["python3", "-c", "b = bytearray(300 * 1024 * 1024); print('allocated')"]);
    expect(oom.stdout).not.toContain("allocated");
    expect(exitCodeOf(oom.status)).toBe(137);
    const after = await core.readNamespacedPod({ name: "real", namespace: NS });
    expect(after.status?.phase).toBe("Failed");
    expect(after.status?.containerStatuses?.[0]?.state?.terminated).toMatchObject({ reason: "OOMKilled", exitCode: 137 });
    await core.deleteNamespacedPod({ name: "real", namespace: NS });
    await waitGone("real");
    await standin.settled();
    expect((await provider.resources()).some((r) => r.includes(sandboxId!))).toBe(false);
  });

  it("enforces activeDeadlineSeconds: the pod goes Failed/DeadlineExceeded and its running exec is killed", async () => {
    await core.createNamespacedPod({ namespace: NS, body: pod("deadline", { deadline: 2 }) });
    await waitRunning("deadline");
    const started = Date.now();
    const r = await execIn(kc, "deadline", ["sleep", "30"]);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(exitCodeOf(r.status)).toBe(137);
    const p = await core.readNamespacedPod({ name: "deadline", namespace: NS });
    expect(p.status).toMatchObject({ phase: "Failed", reason: "DeadlineExceeded" });
    expect(p.status?.containerStatuses?.[0]?.state?.terminated?.exitCode).toBe(137);
    expect(standin.sandboxes().map((s) => s.name)).not.toContain("deadline");
    await core.deleteNamespacedPod({ name: "deadline", namespace: NS });
    await waitGone("deadline");
  });

  it("streams output while the command runs, and kills it when the client closes the exec connection", async () => {
    await core.createNamespacedPod({ namespace: NS, body: pod("closer") });
    await waitRunning("closer");
    const r = await execIn(kc, "closer", ["sh", "-c", "echo out; echo err >&2; touch /workspace/started; sleep 2; touch /workspace/survived"], undefined, (close) =>
      setTimeout(close, 500),
    );
    expect(r.status).toBeNull();
    // Written before the close: relayed as written, not held until the end.
    expect([r.stdout, r.stderr]).toEqual(["out\n", "err\n"]);
    // Execs of a pod run one after another: this one starts once the killed one is gone.
    await new Promise((res) => setTimeout(res, 2500));
    const ls = await execIn(kc, "closer", ["ls", "-A", "/workspace"]);
    expect(ls.stdout).toBe("started\n");
    await core.deleteNamespacedPod({ name: "closer", namespace: NS, gracePeriodSeconds: 0 });
  });

  it("injects slow pod starts and pods vanishing mid-exec", async () => {
    standin.faults.add({ match: { verb: "create", resource: "pods", name: "slow" }, action: { type: "slowStart", ms: 1500 } });
    const created = Date.now();
    await core.createNamespacedPod({ namespace: NS, body: pod("slow") });
    await new Promise((res) => setTimeout(res, 700));
    expect(await phaseOf("slow")).toBe("Pending");
    await waitRunning("slow");
    expect(Date.now() - created).toBeGreaterThanOrEqual(1500);

    await raw("POST", "/standin/faults", { body: { match: { verb: "exec", name: "slow" }, action: { type: "vanish", afterMs: 300 } } });
    const r = await execIn(kc, "slow", ["sleep", "10"]);
    expect(r.status).toBeNull();
    expect(r.closeCode).toBe(1006);
    expect((await apiError(core.readNamespacedPod({ name: "slow", namespace: NS }))).code).toBe(404);
  });

  it("pods of an unknown image fail to pull, and exec on them is refused before the upgrade", async () => {
    await core.createNamespacedPod({ namespace: NS, body: pod("unpulled", { image: "registry.example/unknown:1" }) });
    const waiting = await waitFor("ErrImagePull", async () => {
      const p = await core.readNamespacedPod({ name: "unpulled", namespace: NS });
      return p.status?.containerStatuses?.[0]?.state?.waiting?.reason === "ErrImagePull" ? p : undefined;
    });
    expect(waiting.status?.phase).toBe("Pending");
    await expect(execIn(kc, "unpulled", ["true"])).rejects.toThrow();
    await core.deleteNamespacedPod({ name: "unpulled", namespace: NS });
    await waitGone("unpulled");
  });
});

describe("Kubernetes stand-in through Debian's kubectl 1.20", () => {
  it("gets pods by label, creates from a file (validated against the served OpenAPI document) and deletes", async () => {
    const kubectl = await debianKubectl();
    const k = (...args: string[]) => run(kubectl, ["--kubeconfig", kubeconfigFile, "--cache-dir", path.join(tmp, "kubectl-cache"), ...args]);
    const manifest = path.join(tmp, "pod.yaml");
    await writeFile(
      manifest,
      ["apiVersion: v1", "kind: Pod", "metadata:", "  name: from-kubectl", "  labels:", "    made-by: kubectl", "spec:", "  containers:",
        "  - name: main", "    image: python:3.12-slim", "    command: [sleep, infinity]", ""].join("\n"),
    );
    expect((await k("create", "-f", manifest)).stdout.trim()).toBe("pod/from-kubectl created");
    const table = await waitFor("kubectl shows Running", async () => {
      const { stdout } = await k("get", "pods", "-l", "made-by=kubectl");
      return stdout.includes("Running") ? stdout : undefined;
    });
    expect(table).toMatch(/^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE\n/);
    expect(table).toMatch(/^from-kubectl\s+1\/1\s+Running\s+0\s+\S+$/m);
    expect((await k("get", "pods", "-l", "made-by=someone-else")).stderr).toContain("No resources found in sandboxes namespace.");

    // kubectl validates with the stand-in's OpenAPI document: an unknown top-level field is refused client-side.
    const bad = path.join(tmp, "bad.yaml");
    await writeFile(bad, (await readFile(manifest, "utf8")).replace("spec:", "specs:").replace("from-kubectl", "bad"));
    const refused = await k("create", "-f", bad).then(() => null, (e: { stderr: string }) => e.stderr);
    expect(refused).toContain('unknown field "specs" in io.k8s.api.core.v1.Pod');
    const dup = await k("create", "-f", manifest).then(() => null, (e: { stderr: string }) => e.stderr);
    expect(dup).toContain('Error from server (AlreadyExists): error when creating');

    expect((await k("delete", "pod", "from-kubectl")).stdout.trim()).toBe('pod "from-kubectl" deleted');
    const gone = await k("get", "pod", "from-kubectl").then(() => null, (e: { stderr: string }) => e.stderr);
    expect(gone).toContain('Error from server (NotFound): pods "from-kubectl" not found');
  });
});

describe("Kubernetes stand-in cleanup", () => {
  it("leaves no sandbox on the local provider's work root once every pod is deleted", async () => {
    for (const p of (await core.listNamespacedPod({ namespace: NS })).items) {
      await core.deleteNamespacedPod({ name: p.metadata!.name!, namespace: NS, gracePeriodSeconds: 0 });
    }
    await standin.settled();
    expect(standin.sandboxes()).toEqual([]);
    expect(await provider.resources()).toEqual([]);
    expect((await readdir(provider.workRoot)).filter((n) => n.startsWith("sq-"))).toEqual([]);
  });
});
