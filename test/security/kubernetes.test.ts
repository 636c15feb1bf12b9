/**
 * The hostile-job table and a worker end to end on the kubernetes provider,
 * through real Redis and the Kubernetes stand-in (its pods real bubblewrap
 * sandboxes). Where the provider differs, the option says why: Kubernetes
 * has no per-pod pids limit (the node's podPidsLimit applies, unreported),
 * and the stand-in charges /workspace and /tmp to the pod's memory (a real
 * cluster's emptyDir sizeLimit evicts the pod instead: not reproduced here).
 * Fails, never skips, without Redis, root or bubblewrap.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { LABEL_MANAGED_BY, MANAGED_BY } from "../../providers/provider.js";
import { requireCommand, tempDir } from "../support/harness.js";
import { JOB_IMAGE, POD_IMAGE, SANDBOX_NS, podsWith, startStandin, type StandinRig } from "../support/kubernetes-standin.js";
import { sharedHostileCases } from "./shared-cases.js";
import { nonce, startRig, type Rig } from "./support.js";

requireCommand("redis-server", "redis-server");

const CANARY_NAME = "SANDQ_SECURITY_CANARY_K8S";
const CANARY = `canary-${nonce()}-${nonce()}`;

describe("security: hostile jobs (kubernetes provider, through the stand-in)", () => {
  let k8s: StandinRig;
  let rig: Rig;
  const snapshots = tempDir("sec-k8snap");
  const managedPods = () => podsWith(k8s.core, { [LABEL_MANAGED_BY]: MANAGED_BY });

  beforeAll(async () => {
    k8s = await startStandin("security");
    process.env[CANARY_NAME] = CANARY;
    rig = await startRig(
      "sec-k8s",
      {
        provider: "kubernetes",
        providerSettings: { kubeconfig: k8s.kubeconfigFile, namespace: SANDBOX_NS, images: { [JOB_IMAGE]: POD_IMAGE }, poolMinIdle: 0, poolMaxSize: 0 },
        snapshotsUrl: `file://${snapshots}`,
      },
      { image: JOB_IMAGE },
    );
  });
  afterEach(async () => {
    await rig.assertHealthy();
    await k8s.standin.settled();
  });
  afterAll(async () => {
    delete process.env[CANARY_NAME];
    await rig?.close();
    await k8s?.stop();
  });

  sharedHostileCases(() => rig, { tmpfsSizeCap: true, timeoutKillMs: 4000, pidsEvents: false });

  it("end to end: a job's output, exit code, inline files and a persisted workspace, and no pod left after it", async () => {
    const a = await rig.run({ kind: "shell", script: "cat in.txt; echo err >&2; echo made > out.txt; exit 3", files: { "in.txt": "from the client\n" }, workspace: { persist: true } });
    expect(a).toMatchObject({ status: "failed", exitCode: 3, stdout: "from the client\n", stderr: "err\n", provider: "kubernetes" });
    const b = await rig.run({ kind: "python", code: "print(open('out.txt').read().strip())", workspace: { from: a.snapshot!.id } });
    expect(b).toMatchObject({ status: "succeeded", stdout: "made\n" });
    await k8s.standin.settled();
    expect(await managedPods()).toEqual([]);
  });

  it("the API's faults through the worker: a pod vanishing mid-job and a 429 are retried, a 401 ends the job at once", async () => {
    // The image's first pod gets a tar check by exec: done by this job, so the fault meets the job's own exec.
    await rig.run({ kind: "shell", script: "true" });
    k8s.standin.faults.add({ match: { verb: "exec", namespace: SANDBOX_NS }, action: { type: "vanish", afterMs: 300 }, count: 1 });
    const lost = await rig.run({ kind: "shell", script: "sleep 1; echo done" });
    expect(lost, JSON.stringify(lost)).toMatchObject({ status: "succeeded", stdout: "done\n", attempts: 2 });
    k8s.standin.faults.add({ match: { verb: "create", resource: "pods", namespace: SANDBOX_NS }, action: { type: "fail", code: 429, retryAfterSeconds: 1 }, count: 1 });
    const limited = await rig.run({ kind: "shell", script: "echo after 429" });
    expect(limited, JSON.stringify(limited)).toMatchObject({ status: "succeeded", stdout: "after 429\n", attempts: 2 });
    k8s.standin.faults.add({ match: { verb: "create", resource: "pods", namespace: SANDBOX_NS }, action: { type: "fail", code: 401 }, count: 1 });
    const refused = await rig.run({ kind: "shell", script: "echo never" });
    expect(refused, JSON.stringify(refused)).toMatchObject({ status: "error", attempts: 1, error: { code: "SANDQ_ERR_PROVIDER_CREDENTIALS" } });
    // The credentials fault made the worker report not ready; a passing check brings it back.
    await rig.runtime.provider.check();
  });

  it("no network and none of the worker's environment", async () => {
    const code = `
import socket, os
def probe(name, fn):
    try:
        fn(); print(name, "REACHED")
    except OSError:
        print(name, "blocked")
def tcp(host, port):
    s = socket.socket(); s.settimeout(2); s.connect((host, port))
probe("redis", lambda: tcp("127.0.0.1", 6379))
probe("internet", lambda: tcp("1.1.1.1", 443))
probe("dns", lambda: socket.getaddrinfo("example.com", 80))
print("canary", "${CANARY_NAME}" in os.environ)
print("token", os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"))
`;
    const r = await rig.run({ kind: "python", code });
    expect(r.status, r.stderr).toBe("succeeded");
    expect(r.stdout).toBe("redis blocked\ninternet blocked\ndns blocked\ncanary False\ntoken False\n");
    expect(r.stdout + r.stderr).not.toContain(CANARY);
  });
});
