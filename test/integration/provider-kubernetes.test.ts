/**
 * The kubernetes provider through the Kubernetes stand-in
 * (standins/kubernetes): the shared contract suite, then what only this
 * provider promises (the pod it creates, the NetworkPolicy check, the API's
 * failures as sandqueue errors, reaping, the warm pool, exec under v4).
 * Every pod is a real bubblewrap sandbox behind the stand-in's API, so
 * exec, limits, kills and tar are real; the client is @kubernetes/client-node
 * itself. Needs root and bubblewrap; fails, never skips, without them.
 */
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NetworkingV1Api } from "@kubernetes/client-node";
import { ErrorCodes } from "../../errors/index.js";
import { describeProviderContract } from "../../providers/contract.js";
import { filesToTar } from "../../providers/archive/index.js";
import { KubernetesProvider, kubernetesDefinition, type KubernetesProviderOptions } from "../../providers/kubernetes/index.js";
import { LABEL_JOB, LABEL_MANAGED_BY, LABEL_WORKER, MANAGED_BY, labelSafe, ownershipLabels, type OwnerLiveness, type SandboxSpec } from "../../providers/provider.js";
import { JOB_IMAGE, POD_IMAGE, SANDBOX_NS, podsWith, startStandin, type StandinRig } from "../support/kubernetes-standin.js";
import { shellRequest } from "../support/harness.js";

const RUN = `${process.pid}-${Date.now().toString(36)}`;
let rigPromise: Promise<StandinRig> | undefined;
const rig = (): Promise<StandinRig> => (rigPromise ??= startStandin("provider"));
const providers: KubernetesProvider[] = [];
let ownerSeq = 0;

async function makeProvider(extra: Partial<KubernetesProviderOptions> = {}): Promise<KubernetesProvider> {
  const r = await rig();
  const p = new KubernetesProvider({
    kubeConfig: r.kc,
    namespace: SANDBOX_NS,
    images: { [JOB_IMAGE]: POD_IMAGE },
    owner: `test-${RUN}-${ownerSeq++}`,
    labels: { "sandqueue.io/test-run": RUN },
    ...extra,
  });
  providers.push(p);
  return p;
}

afterAll(async () => {
  await Promise.allSettled(providers.map((p) => p.close()));
  if (rigPromise) await (await rigPromise).stop();
});

let contractProvider: KubernetesProvider | undefined;
describeProviderContract(
  "kubernetes (through the stand-in)",
  async () => (contractProvider = await makeProvider()),
  {
    image: JOB_IMAGE,
    missingImage: "sandqueue-contract-no-such-image",
    listResources: async () => podsWith((await rig()).core, { [LABEL_WORKER]: labelSafe(contractProvider!.owner) }),
    memoryMb: 256,
    pids: 64,
    slackMs: 1_000,
  },
);

/** A tar of `files` as tar-stream writes it (names taken as given: validation is the provider's). */
async function rawTar(files: Record<string, string>): Promise<Readable> {
  const { pack } = await import("tar-stream");
  const p = pack();
  for (const [name, content] of Object.entries(files)) p.entry({ name, mode: 0o644 }, content);
  p.finalize();
  return p as unknown as Readable;
}

async function entryNames(tar: Readable): Promise<string[]> {
  const { extract } = await import("tar-stream");
  const ex = extract();
  tar.pipe(ex as unknown as NodeJS.WritableStream);
  const names: string[] = [];
  for await (const entry of ex as unknown as AsyncIterable<Readable & { header: { name: string } }>) {
    names.push(entry.header.name.replace(/^\.\//, ""));
    entry.resume();
  }
  return names;
}

const spec = (labels: Record<string, string> = {}, memoryMb = 128): SandboxSpec => ({
  image: JOB_IMAGE,
  limits: { memoryMb, pids: 64 },
  network: "none",
  labels,
  annotations: { team: "search", "free form key": "any value" },
  maxLifetimeMs: 90_000,
});

describe("kubernetes provider specifics", () => {
  beforeAll(async () => {
    await rig();
  });

  it("creates a hardened pod: limits, no token, non-root, no escalation, no caps, read-only root, RuntimeDefault, sized emptyDirs, deadline, labels", async () => {
    const p = await makeProvider({ runtimeClassName: "gvisor", nodeSelector: { pool: "sandboxes" }, tolerations: [{ key: "sandbox", operator: "Exists", effect: "NoSchedule" }], cpu: "500m", workspaceSizeMb: 100, tmpSizeMb: 20 });
    const box = await p.acquire(spec(ownershipLabels(p.owner, "job-1"), 96), {});
    try {
      const pod = await (await rig()).core.readNamespacedPod({ name: box.id, namespace: SANDBOX_NS });
      const s = pod.spec!;
      const c = s.containers[0]!;
      expect(c.resources?.limits).toEqual({ memory: "96Mi", cpu: "500m" });
      expect(s.automountServiceAccountToken).toBe(false);
      expect(s.activeDeadlineSeconds).toBe(90);
      expect(s.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65534, seccompProfile: { type: "RuntimeDefault" } });
      expect(c.securityContext).toMatchObject({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        runAsNonRoot: true,
        capabilities: { drop: ["ALL"] },
      });
      expect(s.volumes).toEqual(
        expect.arrayContaining([
          { name: "workspace", emptyDir: { sizeLimit: "100Mi" } },
          { name: "tmp", emptyDir: { sizeLimit: "20Mi" } },
        ]),
      );
      expect(c.volumeMounts?.map((m) => m.mountPath).sort()).toEqual(["/tmp", "/workspace"]);
      expect([s.runtimeClassName, s.nodeSelector, s.tolerations]).toEqual(["gvisor", { pool: "sandboxes" }, [{ key: "sandbox", operator: "Exists", effect: "NoSchedule" }]]);
      expect(pod.metadata?.labels).toMatchObject({ [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_WORKER]: labelSafe(p.owner), [LABEL_JOB]: "job-1" });
      expect(JSON.parse(pod.metadata?.annotations?.["sandqueue.io/job-labels"] ?? "{}")).toEqual({ team: "search", "free form key": "any value" });
      const r = await box.exec(shellRequest("id -u; echo hi > /workspace/x && cat /workspace/x"));
      expect(r.stdout.toString()).toBe("1000\nhi\n"); // the stand-in runs execs as uid 1000 whatever runAsUser says
    } finally {
      await box.release();
    }
  });

  it("sends the environment on stdin, never in the exec request (audit logs show its URL); any value round-trips", async () => {
    const r = await rig();
    const p = await makeProvider();
    const box = await p.acquire(spec(), {});
    try {
      const secret = `s3cr3t-${RUN}`;
      const odd = "line one\nline two\\n back\\slash é ünï %s $HOME `x` 'q' \"d\" \t tab\n";
      const res = await box.exec({
        argv: ["python3", "-c", "import os, sys; sys.stdout.write(os.environ['ODD'] + '|' + os.environ['TOKEN'] + '|' + sys.stdin.read())"],
        env: { PATH: "/usr/bin:/bin", ODD: odd, TOKEN: secret },
        stdin: "and stdin after it",
        timeoutMs: 10_000,
        maxOutputBytes: 1 << 20,
      });
      expect(res.stdout.toString()).toBe(`${odd}|${secret}|and stdin after it`);
      const execs = r.standin.requests().filter((q) => q.path.includes(`/pods/${box.id}/exec`));
      expect(execs.length).toBeGreaterThan(0);
      for (const q of r.standin.requests()) expect(decodeURIComponent(q.path)).not.toContain(secret);
    } finally {
      await box.release();
    }
  });

  it("archive targets through a symlink in the middle of the path are refused, missing ones made", async () => {
    const p = await makeProvider();
    const box = await p.acquire(spec(), {});
    try {
      await box.exec(shellRequest("mkdir -p /tmp/real/in && ln -s /tmp/real /workspace/t"));
      for (const dir of ["/workspace/t/in", "/workspace/t/in/new"]) {
        await expect(box.putArchive(dir, filesToTar({ "x.txt": "x" }))).rejects.toMatchObject({ code: ErrorCodes.TAR_THROUGH_SYMLINK });
      }
      await expect(box.getArchive("/workspace/t/in")).rejects.toMatchObject({ code: ErrorCodes.TAR_THROUGH_SYMLINK });
      expect((await box.exec(shellRequest("ls -A /tmp/real/in"))).stdout.toString()).toBe("");
      await box.putArchive("/workspace/a/b", filesToTar({ "x.txt": "made\n" }));
      expect((await box.exec(shellRequest("cat /workspace/a/b/x.txt"))).stdout.toString()).toBe("made\n");
    } finally {
      await box.release();
    }
  });

  it("small archives put into /workspace ride along with the next exec: one exec request, files there, the job's stdin and env intact", async () => {
    const r = await rig();
    const p = await makeProvider();
    const box = await p.acquire(spec(), {});
    const execs = () => r.standin.requests().filter((q) => q.path.includes(`/pods/${box.id}/exec`)).length;
    try {
      const before = execs();
      await box.putArchive("/workspace", filesToTar({ "a/one.txt": "one\n", "same.txt": "first\n" }));
      await box.putArchive("/workspace", filesToTar({ "two.txt": "two\n", "same.txt": "second\n" }));
      expect(execs()).toBe(before);
      const res = await box.exec({
        argv: ["/bin/sh", "-c", 'cat a/one.txt two.txt same.txt; printf "%s|%s|%s" "$TOKEN" "$(cat)" "$TAR_OPTIONS"'],
        // The job's environment is set after the extraction: its TAR_OPTIONS does not reach our tar.
        env: { PATH: "/usr/bin:/bin", TOKEN: "t0k", TAR_OPTIONS: "--to-stdout" },
        stdin: "stdin after two archives",
        timeoutMs: 10_000,
        maxOutputBytes: 1 << 20,
      });
      expect([res.exitCode, res.stdout.toString(), res.stderr.toString()]).toEqual([0, "one\ntwo\nsecond\nt0k|stdin after two archives|--to-stdout", ""]);
      expect(execs()).toBe(before + 1);
      // Without stdin for the job, the last archive is read to the end: the job sees an empty stdin.
      await box.putArchive("/workspace", filesToTar({ "three.txt": "three\n" }));
      const last = await box.exec(shellRequest("cat three.txt; wc -c"));
      expect(last.stdout.toString().replace(/ +/g, "")).toBe("three\n0\n");
    } finally {
      await box.release();
    }
  });

  it("a carried archive that fails to extract fails the exec as the put's error, and the job never runs", async () => {
    const p = await makeProvider();
    const box = await p.acquire(spec(), {});
    try {
      // A file where the archive needs a directory: tar fails in the sandbox (the archive itself is valid).
      await box.exec(shellRequest("echo file > /workspace/d"));
      await box.putArchive("/workspace", filesToTar({ "d/x.txt": "x\n" }));
      const failed = box.exec(shellRequest("echo ran > /workspace/ran; exit 7"));
      await expect(failed).rejects.toMatchObject({ code: ErrorCodes.PROVIDER_FAILED, message: expect.stringMatching(/tar in the sandbox failed for '\/workspace' \(exit \d+\): .*d/) });
      const after = await box.exec(shellRequest("test -e /workspace/ran && echo RAN; cat /workspace/d"));
      expect(after.stdout.toString()).toBe("file\n");
      // A bad archive still fails putArchive itself, before anything is sent.
      await expect(box.putArchive("/workspace", await rawTar({ "ok.txt": "ok", "../escape.txt": "x" }))).rejects.toMatchObject({ code: ErrorCodes.TAR_PARENT_PATH });
      expect((await box.exec(shellRequest("ls /workspace"))).stdout.toString()).toBe("d\n");
    } finally {
      await box.release();
    }
  });

  it("carried archives land before anything that reads the workspace or puts elsewhere: getArchive, a large put, a put into a subdirectory", async () => {
    const p = await makeProvider();
    const box = await p.acquire(spec(), {});
    try {
      await box.putArchive("/workspace", filesToTar({ "in/small.txt": "small\n", "f.txt": "small\n" }));
      const files = await entryNames(await box.getArchive("/workspace/in"));
      expect(files).toContain("small.txt");
      // Small then large (streamed, over CARRY_MAX_BYTES): the later one wins.
      await box.putArchive("/workspace", filesToTar({ "f.txt": "small again\n" }));
      await box.putArchive("/workspace", filesToTar({ "f.txt": "large\n", "pad.bin": "x".repeat(3 << 20) }));
      expect((await box.exec(shellRequest("cat f.txt"))).stdout.toString()).toBe("large\n");
      await box.putArchive("/workspace", filesToTar({ "sub/g.txt": "carried\n" }));
      await box.putArchive("/workspace/sub", filesToTar({ "g.txt": "direct\n" }));
      expect((await box.exec(shellRequest("cat sub/g.txt"))).stdout.toString()).toBe("direct\n");
    } finally {
      await box.release();
    }
  });

  it("refuses to start without a default-deny NetworkPolicy in the namespace, naming what to apply", async () => {
    const r = await rig();
    const ns = `nopolicy-${process.pid}`;
    await r.core.createNamespace({ body: { metadata: { name: ns } } });
    const ctx = { workerId: `w-${RUN}`, stateDir: r.dir, concurrency: 1 };
    const settings = { kubeconfig: r.kubeconfigFile, namespace: ns, images: {}, nodeSelector: {}, tolerations: [] } as never;
    await expect(kubernetesDefinition.create(settings, ctx)).rejects.toMatchObject({
      code: ErrorCodes.CONFIG_INVALID,
      message: expect.stringMatching(/no default-deny NetworkPolicy.*kubectl apply -f deploy\/kubernetes\/sandbox-namespace\.yaml/),
    });
    // A policy that lets egress through is not one.
    const net = r.kc.makeApiClient(NetworkingV1Api);
    await net.createNamespacedNetworkPolicy({ namespace: ns, body: { metadata: { name: "allow-dns" }, spec: { podSelector: {}, policyTypes: ["Egress"], egress: [{ ports: [{ port: 53, protocol: "UDP" }] }] } } });
    await expect(kubernetesDefinition.create(settings, ctx)).rejects.toMatchObject({ code: ErrorCodes.CONFIG_INVALID });
    await net.createNamespacedNetworkPolicy({ namespace: ns, body: { metadata: { name: "deny" }, spec: { podSelector: { matchLabels: { [LABEL_MANAGED_BY]: MANAGED_BY } }, policyTypes: ["Ingress", "Egress"] } } });
    const p = await kubernetesDefinition.create(settings, ctx);
    await p.check();
    await p.close();
    await r.core.deleteNamespace({ name: ns });
  });

  it("maps the API's failures: 5xx retryable, 429 RATE_LIMITED with Retry-After, 401 CREDENTIALS; nothing left behind", async () => {
    const r = await rig();
    const p = await makeProvider();
    const mine = () => podsWith(r.core, { [LABEL_WORKER]: labelSafe(p.owner) });
    r.standin.faults.add({ match: { verb: "create", resource: "pods", namespace: SANDBOX_NS }, action: { type: "fail", code: 503 }, count: 1 });
    await expect(p.acquire(spec(), {})).rejects.toMatchObject({ code: ErrorCodes.PROVIDER_UNAVAILABLE, retryable: true });
    r.standin.faults.add({ match: { verb: "create", resource: "pods", namespace: SANDBOX_NS }, action: { type: "fail", code: 500 }, count: 1 });
    await expect(p.acquire(spec(), {})).rejects.toMatchObject({ code: ErrorCodes.PROVIDER_UNAVAILABLE, retryable: true });
    r.standin.faults.add({ match: { verb: "create", resource: "pods" }, action: { type: "fail", code: 429, retryAfterSeconds: 2 }, count: 1 });
    await expect(p.acquire(spec(), {})).rejects.toMatchObject({ code: ErrorCodes.PROVIDER_RATE_LIMITED, retryable: true, retryAfterMs: 2000 });
    r.standin.faults.add({ match: { verb: "create", resource: "pods" }, action: { type: "fail", code: 401 }, count: 1 });
    const cred = await p.acquire(spec(), {}).catch((e: unknown) => e);
    expect(cred).toMatchObject({ code: ErrorCodes.PROVIDER_CREDENTIALS, retryable: false });
    expect(String((cred as Error).message)).not.toContain(r.standin.token ?? "no-token");
    // 429 on the readiness poll of a created pod: the pod is deleted again.
    r.standin.faults.add({ match: { verb: "get", resource: "pods" }, action: { type: "fail", code: 429 }, count: 1 });
    await expect(p.acquire(spec(), {})).rejects.toMatchObject({ code: ErrorCodes.PROVIDER_RATE_LIMITED });
    await r.standin.settled();
    expect(await mine()).toEqual([]);
    // And it works again.
    const box = await p.acquire(spec(), {});
    expect((await box.exec(shellRequest("echo ok"))).stdout.toString()).toBe("ok\n");
    await box.release();
  });

  it("a pod vanishing or deleted mid-exec is SANDBOX_LOST (retryable); an exec refused with 401 is CREDENTIALS", async () => {
    const r = await rig();
    const p = await makeProvider();
    const box = await p.acquire(spec(), {});
    r.standin.faults.add({ match: { verb: "exec", name: box.id }, action: { type: "vanish", afterMs: 300 }, count: 1 });
    await expect(box.exec(shellRequest("sleep 10"))).rejects.toMatchObject({ code: ErrorCodes.SANDBOX_LOST, retryable: true, message: expect.stringContaining("the pod is gone") });
    await box.release();
    // Deleted under a running job (kubectl delete pod): the exec ends 137, which is the pod's doing, not the job's.
    const deleted = await p.acquire(spec(), {});
    const running = deleted.exec(shellRequest("echo started; sleep 10"));
    await new Promise((res) => setTimeout(res, 500));
    await r.core.deleteNamespacedPod({ name: deleted.id, namespace: SANDBOX_NS });
    await expect(running).rejects.toMatchObject({ code: ErrorCodes.SANDBOX_LOST, retryable: true });
    await deleted.release();
    const other = await p.acquire(spec(), {});
    r.standin.faults.add({ match: { verb: "exec", name: other.id }, action: { type: "fail", code: 401 }, count: 1 });
    await expect(other.exec(shellRequest("true"))).rejects.toMatchObject({ code: ErrorCodes.PROVIDER_CREDENTIALS });
    await other.release();
  });

  it("reaps the pods of a dead worker (no heartbeat), never a live one's nor its own", async () => {
    const r = await rig();
    const dead = await makeProvider();
    const alive = await makeProvider();
    const reaper = await makeProvider();
    const deadBoxes = [await dead.acquire(spec(ownershipLabels(dead.owner, "j1")), {}), await dead.acquire(spec(ownershipLabels(dead.owner, "j2")), {})];
    const aliveBox = await alive.acquire(spec(ownershipLabels(alive.owner, "j3")), {});
    const ownBox = await reaper.acquire(spec(ownershipLabels(reaper.owner, "j4")), {});
    const liveness: OwnerLiveness = { liveOwners: async (ids) => new Set(ids.filter((id) => id !== labelSafe(dead.owner))) };
    const removed = await reaper.reap(liveness);
    expect(removed).toBeGreaterThanOrEqual(2);
    await r.standin.settled();
    expect(await podsWith(r.core, { [LABEL_WORKER]: labelSafe(dead.owner) })).toEqual([]);
    expect(await podsWith(r.core, { [LABEL_WORKER]: labelSafe(alive.owner) })).toEqual([aliveBox.id]);
    expect(await podsWith(r.core, { [LABEL_WORKER]: labelSafe(reaper.owner) })).toEqual([ownBox.id]);
    await expect(deadBoxes[0]!.exec(shellRequest("true"))).rejects.toMatchObject({ code: ErrorCodes.SANDBOX_LOST });
    await Promise.all([...deadBoxes, aliveBox, ownBox].map((b) => b.release()));
  });

  it("warm pool: a ready pod is handed out, relabelled for the job and its deadline cut to the job's lifetime", async () => {
    const r = await rig();
    const p = await makeProvider({ pool: { minIdle: 1, maxSize: 2 } });
    p.prewarm(spec());
    await p.pool.waitReady();
    expect(p.readySandboxes()).toEqual({ [POD_IMAGE]: 1 });
    const box = await p.acquire(spec(ownershipLabels(p.owner, "pooled-job")), {});
    expect(p.pool.hits).toBe(1);
    // The adoption patch runs beside the job.
    await (box as unknown as { adopted: Promise<void> }).adopted;
    const pod = await r.core.readNamespacedPod({ name: box.id, namespace: SANDBOX_NS });
    expect(pod.metadata?.labels?.[LABEL_JOB]).toBe("pooled-job");
    expect(pod.metadata?.labels?.["sandqueue.io/pooled"]).toBeUndefined();
    expect(pod.spec?.activeDeadlineSeconds).toBeLessThanOrEqual(92);
    expect(JSON.parse(pod.metadata?.annotations?.["sandqueue.io/job-labels"] ?? "{}")).toMatchObject({ team: "search" });
    expect((await box.exec(shellRequest("echo pooled"))).stdout.toString()).toBe("pooled\n");
    await box.release();
    await p.close();
    await r.standin.settled();
    expect(await podsWith(r.core, { [LABEL_WORKER]: labelSafe(p.owner) })).toEqual([]);
  });
});

describe("kubernetes provider against a v4-only API server", () => {
  let v4: StandinRig;
  beforeAll(async () => {
    v4 = await startStandin("v4", { execProtocols: ["v4.channel.k8s.io"], v4StdinIdleMs: 100 });
  });
  afterAll(async () => {
    await v4?.stop();
  });

  it("stdin of a known length (head -c) and tar archives work without v5's half-close", async () => {
    const p = new KubernetesProvider({ kubeConfig: v4.kc, namespace: SANDBOX_NS, images: { [JOB_IMAGE]: POD_IMAGE }, owner: `v4-${RUN}` });
    providers.push(p);
    const box = await p.acquire(spec(), {});
    expect(p.protocol).toBe("v4.channel.k8s.io");
    const r = await box.exec({ argv: ["cat"], env: { PATH: "/usr/bin:/bin" }, stdin: "hello v4", timeoutMs: 10_000, maxOutputBytes: 1 << 20 });
    expect([r.exitCode, r.stdout.toString()]).toEqual([0, "hello v4"]);
    await box.putArchive("/workspace", filesToTar({ "a/b.txt": "bee\n" }));
    expect((await box.exec(shellRequest("cat a/b.txt"))).stdout.toString()).toBe("bee\n");
    const out = await box.getArchive("/workspace/a");
    const chunks: Buffer[] = [];
    for await (const c of out as Readable) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).includes(Buffer.from("bee\n"))).toBe(true);
    await box.release();
  });
});
