/**
 * The islo provider against the islo stand-in, beyond the contract suite:
 * idempotent create, paused/stopped sandboxes resumed (never created twice),
 * reaping through the list call, every transport fault the service can
 * show, and the gateway profile lifecycle of a job's network policy.
 */
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startIslo, type IsloHarness } from "../support/islo-harness.js";
import { LABEL_JOB, LABEL_WORKER, labelSafe, type OwnerLiveness, type SandboxSpec } from "../../providers/provider.js";
import { ownerOf, sandboxName, type EgressPolicyLike } from "../../providers/islo/index.js";

let h: IsloHarness;
beforeAll(async () => {
  h = await startIslo();
});
afterAll(async () => {
  await h?.close();
});

const spec = (labels: Record<string, string> = {}): SandboxSpec => ({
  image: "host",
  limits: { memoryMb: 256, pids: 64 },
  network: "none",
  labels,
  annotations: {},
  maxLifetimeMs: 600_000,
});
const PATH_ENV = { PATH: "/usr/bin:/bin" };
const sh = (script: string) => ({ argv: ["/bin/sh", "-c", script], env: PATH_ENV, timeoutMs: 20_000, maxOutputBytes: 1 << 20 });

/** The requests the stand-in served since `mark`, as "METHOD path status". */
function since(mark: number): string[] {
  return h.standin.requests.slice(mark).map((r) => `${r.method} ${r.path.replace(/\/exec\/[0-9a-f-]+$/, "/exec/ID")} ${r.status}`);
}

describe("names", () => {
  it("carry the owner's worker label, read back exactly, and the job", () => {
    for (const worker of ["w1", "host-12-ab-cd", labelSafe("node-a:1234:ff00aa"), "a".repeat(63)]) {
      const name = sandboxName(worker, "job-42");
      expect(ownerOf(name)).toBe(worker);
      expect(name).toContain("job-42");
      expect(name).toMatch(/^[A-Za-z0-9][A-Za-z0-9._-]*$/);
    }
    // Job id + attempt: the same on every try of one create, another for the next attempt.
    expect(sandboxName("w1", "job-42", 2)).toBe("sq-2-w1-job-42-a2");
    expect(sandboxName("w1", "job-42", 3)).not.toBe(sandboxName("w1", "job-42", 2));
    expect(ownerOf("my-own-sandbox")).toBeNull();
    expect(ownerOf("sq-9-short")).toBeNull();
  });
});

describe("create", () => {
  it("a create whose answer is lost is retried under the same name: the 409 adopts the first sandbox, nothing doubles", async () => {
    const p = h.provider();
    h.standin.faults.add({ match: { op: "create" }, action: { type: "drop" } });
    const mark = h.standin.requests.length;
    const box = await p.acquire({ ...spec({ [LABEL_JOB]: "lost-answer" }), attempt: 1 }, {});
    expect(box.id).toMatch(/-lost-answer-a1$/);
    const creates = since(mark).filter((l) => l.startsWith("POST /sandboxes "));
    // Status 0: served (the sandbox exists) but the answer was cut off.
    expect(creates).toEqual(["POST /sandboxes 0", "POST /sandboxes 409"]);
    expect(h.standin.sandboxList().filter((s) => s.name === box.id)).toHaveLength(1);
    expect((await box.exec(sh("echo adopted"))).stdout.toString()).toBe("adopted\n");
    await box.release();
    expect(h.standin.sandboxList().find((s) => s.name === box.id)).toBeUndefined();
  });

  it("a 409 for our name on a paused sandbox resumes it, never creates a second one (the seed PR's bug)", async () => {
    const p = h.provider({ backoffMs: 400 });
    h.standin.faults.add({ match: { op: "create" }, action: { type: "drop" } });
    const mark = h.standin.requests.length;
    const pending = p.acquire(spec({ [LABEL_JOB]: "paused-on-retry" }), {});
    // islo pauses it (lifecycle) before our retry arrives.
    let name: string | undefined;
    while (!(name = h.standin.sandboxList().find((s) => s.name.includes("paused-on-retry"))?.name)) await new Promise((r) => setTimeout(r, 5));
    h.standin.setStatus(name, "paused");
    const box = await pending;
    expect(box.id).toBe(name);
    const log = since(mark);
    expect(log.filter((l) => l.startsWith("POST /sandboxes "))).toEqual(["POST /sandboxes 0", "POST /sandboxes 409"]);
    expect(log).toContain(`POST /sandboxes/${name}/resume 200`);
    expect(h.standin.sandboxList().filter((s) => s.name.includes("paused-on-retry"))).toEqual([expect.objectContaining({ name, status: "running" })]);
    await box.release();
  });

  it("an exec on a sandbox islo paused or stopped meanwhile resumes it first; the workspace is still there", async () => {
    const p = h.provider();
    const box = await p.acquire(spec(), {});
    await box.exec(sh("echo kept > f"));
    for (const status of ["paused", "stopped"] as const) {
      h.standin.setStatus(box.id, status);
      const mark = h.standin.requests.length;
      const r = await box.exec(sh("cat f"));
      expect(r.stdout.toString()).toBe("kept\n");
      const log = since(mark);
      expect(log[0]).toBe(`POST /sandboxes/${box.id}/exec 400`);
      expect(log).toContain(`POST /sandboxes/${box.id}/resume 200`);
      expect(log.some((l) => l.startsWith("POST /sandboxes "))).toBe(false);
    }
    expect(h.standin.sandboxList().filter((s) => s.name === box.id)).toHaveLength(1);
    // Workspace transfers too: a paused sandbox is resumed, then the archive goes through.
    h.standin.setStatus(box.id, "paused");
    await box.putArchive("/workspace", Readable.from([await (await import("../unit/archive-helpers.js")).rawTar([{ name: "g.txt", body: "put\n" }])]));
    h.standin.setStatus(box.id, "stopped");
    const { collect } = await import("../unit/archive-helpers.js");
    const tar = await collect(await box.getArchive("/workspace"));
    expect(tar.includes(Buffer.from("put\n"))).toBe(true);
    expect(tar.includes(Buffer.from("kept\n"))).toBe(true);
    await box.release();
  });

  it("an unknown image is IMAGE_NOT_FOUND and leaves nothing; a missing API key is PROVIDER_CREDENTIALS, asked once", async () => {
    const before = await h.resources();
    await expect(h.provider().acquire({ ...spec(), image: "no-such-islo-image" }, {})).rejects.toMatchObject({ code: "SANDQ_ERR_IMAGE_NOT_FOUND", retryable: false });
    // SANDQUEUE_ISLO_IMAGES: the job's image name is mapped to islo's before the create.
    const mapped = h.provider({ images: { "py-job": "host", "gone-job": "islo/missing:1" } });
    const box = await mapped.acquire({ ...spec(), image: "py-job" }, {});
    expect((await box.exec(sh("echo mapped"))).stdout.toString()).toBe("mapped\n");
    await box.release();
    const missing = (await mapped.acquire({ ...spec(), image: "gone-job" }, {}).catch((e: unknown) => e)) as Error;
    expect(missing).toMatchObject({ code: "SANDQ_ERR_IMAGE_NOT_FOUND" });
    expect(missing.message).toContain("'islo/missing:1' (job image 'gone-job')");
    expect(await h.resources()).toEqual(before);
    const mark = h.standin.requests.length;
    const err = await h.provider({ apiKey: "ak_wrong" }).acquire(spec(), {}).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
    expect((err as Error).message).not.toContain("ak_wrong");
    expect(since(mark)).toEqual(["POST /auth/token 401"]);
    expect(await h.resources()).toEqual(before);
  });
});

describe("faults", () => {
  it("tolerates 5 consecutive 5xx while polling (islo's own client does) and fails on the 6th", async () => {
    const p = h.provider();
    const box = await p.acquire(spec(), {});
    h.standin.faults.add({ match: { op: "exec-result", name: box.id }, action: { type: "fail", code: 503 }, count: 5 });
    const r = await box.exec(sh("echo through"));
    expect(r).toMatchObject({ exitCode: 0, limitHit: null });
    expect(r.stdout.toString()).toBe("through\n");
    h.standin.faults.add({ match: { op: "exec-result", name: box.id }, action: { type: "fail", code: 500 }, count: 6 });
    await expect(box.exec(sh("echo never seen"))).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
    h.standin.faults.clear();
    await box.release();
  });

  it("a 5xx on POST /exec is not retried (a command must not run twice)", async () => {
    const box = await h.provider().acquire(spec(), {});
    h.standin.faults.add({ match: { op: "exec", name: box.id }, action: { type: "fail", code: 502 } });
    const mark = h.standin.requests.length;
    await expect(box.exec(sh("echo once >> count"))).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE" });
    expect(since(mark).filter((l) => l.includes("/exec "))).toEqual([`POST /sandboxes/${box.id}/exec 502`]);
    expect((await box.exec(sh("cat count 2>/dev/null; echo end"))).stdout.toString()).toBe("end\n");
    await box.release();
  });

  it("429 with Retry-After is waited out, then served", async () => {
    const p = h.provider();
    h.standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 429, retryAfterSeconds: 1 } });
    const mark = h.standin.requests.length;
    const t0 = Date.now();
    const box = await p.acquire(spec(), {});
    const waited = Date.now() - t0;
    expect(since(mark).filter((l) => l.startsWith("POST /sandboxes "))).toEqual(["POST /sandboxes 429", "POST /sandboxes 201"]);
    // Honouring the header means not asking again before it said.
    expect(waited).toBeGreaterThanOrEqual(950);
    await box.release();
  });

  it("403 is PROVIDER_CREDENTIALS at once; a 401 (expired token) gets one new token and goes through", async () => {
    const p = h.provider();
    const box = await p.acquire(spec(), {});
    h.standin.faults.add({ match: { op: "exec", name: box.id }, action: { type: "fail", code: 403 } });
    let mark = h.standin.requests.length;
    await expect(box.exec(sh("true"))).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_CREDENTIALS", retryable: false });
    expect(since(mark)).toEqual([`POST /sandboxes/${box.id}/exec 403`]);
    h.standin.faults.add({ match: { op: "exec", name: box.id }, action: { type: "fail", code: 401 } });
    mark = h.standin.requests.length;
    expect((await box.exec(sh("echo again"))).stdout.toString()).toBe("again\n");
    expect(since(mark).slice(0, 3)).toEqual([`POST /sandboxes/${box.id}/exec 401`, "POST /auth/token 200", `POST /sandboxes/${box.id}/exec 200`]);
    await box.release();
  });

  it("slow answers past the per-attempt timeout are retried", async () => {
    const box = await h.provider({ timeoutMs: 300 }).acquire(spec(), {});
    h.standin.faults.add({ match: { op: "exec-result", name: box.id }, action: { type: "delay", ms: 1_000 }, count: 2 });
    const r = await box.exec(sh("echo slow"));
    expect(r.stdout.toString()).toBe("slow\n");
    await box.release();
  });

  it("a sandbox deleted mid-exec is SANDBOX_LOST (retryable), and stays lost", async () => {
    const box = await h.provider().acquire(spec(), {});
    h.standin.faults.add({ match: { op: "exec", name: box.id }, action: { type: "vanish", afterMs: 300 } });
    await expect(box.exec(sh("sleep 10"))).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST", retryable: true });
    expect(h.standin.sandboxList().find((s) => s.name === box.id)).toBeUndefined();
    await expect(box.exec(sh("true"))).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST" });
    await box.release();
  });

  it("a sandbox stopped from outside mid-exec is SANDBOX_LOST, not the job's failure", async () => {
    const box = await h.provider().acquire(spec(), {});
    const pending = box.exec(sh("sleep 10"));
    await new Promise((r) => setTimeout(r, 400));
    h.standin.setStatus(box.id, "stopped");
    await expect(pending).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_LOST", retryable: true });
    await box.release();
    expect(h.standin.sandboxList().find((s) => s.name === box.id)).toBeUndefined();
  });
});

describe("reaping through the list call", () => {
  it("deletes the sandboxes and job profiles of workers without a heartbeat; its own, live workers', others' and operator profiles stay", async () => {
    const policy: EgressPolicyLike = { default: "deny", egress: ["pypi.org"] };
    const dead = h.provider({ owner: "dead-worker" });
    const live = h.provider({ owner: "live-worker" });
    const reaper = h.provider({ owner: "reaper-worker" });
    const d1 = await dead.acquire(spec({ [LABEL_WORKER]: "dead-worker", [LABEL_JOB]: "j1" }), {});
    const d2 = await dead.acquire(spec({ [LABEL_WORKER]: "dead-worker", [LABEL_JOB]: "j2" }), { egressPolicy: policy });
    const l1 = await live.acquire(spec({ [LABEL_WORKER]: "live-worker", [LABEL_JOB]: "j3" }), {});
    const own = await reaper.acquire(spec({ [LABEL_WORKER]: "reaper-worker", [LABEL_JOB]: "j4" }), {});
    // Someone else's sandbox and an operator's profile on the same account.
    await reaper.api.call("compute", { method: "POST", path: "/sandboxes", json: { name: "someone-elses", image: "host" } });
    await reaper.api.call("control", { method: "POST", path: "/gateway/profiles", json: { name: "operator-profile", default_action: "deny" } });
    const asked: string[][] = [];
    const owners: OwnerLiveness = {
      async liveOwners(labels) {
        asked.push([...labels].sort());
        return new Set(labels.filter((l) => l !== "dead-worker"));
      },
    };
    expect(await reaper.reap(owners)).toBe(2);
    expect(asked).toHaveLength(1);
    expect(asked[0]).toEqual(expect.arrayContaining(["dead-worker", "live-worker"]));
    expect(asked[0]).not.toContain("reaper-worker");
    const names = h.standin.sandboxList().map((s) => s.name);
    expect(names).not.toContain(d1.id);
    expect(names).not.toContain(d2.id);
    expect(names).toEqual(expect.arrayContaining([l1.id, own.id, "someone-elses"]));
    const profiles = h.standin.profileList().map((p) => p.name);
    expect(profiles).toContain("operator-profile");
    expect(profiles.some((n) => ownerOf(n) === "dead-worker")).toBe(false);
    // Without heartbeats to ask, nothing is reaped.
    expect(await reaper.reap()).toBe(0);
    // A release whose delete fails (503s past the retries) is retried by the next reap.
    const stuck = await reaper.acquire(spec({ [LABEL_JOB]: "stuck" }), {});
    h.standin.faults.add({ match: { op: "delete", name: stuck.id }, action: { type: "fail", code: 503 }, count: 6 });
    await expect(stuck.release()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE" });
    expect(h.standin.sandboxList().map((s) => s.name)).toContain(stuck.id);
    expect(await reaper.reap()).toBe(1);
    expect(h.standin.sandboxList().map((s) => s.name)).not.toContain(stuck.id);
    expect(await reaper.reap()).toBe(0);
    await Promise.all([l1.release(), own.release(), d1.release(), d2.release()]);
    await reaper.api.call("compute", { method: "DELETE", path: "/sandboxes/someone-elses" });
    const op = h.standin.profileList().find((p) => p.name === "operator-profile")!;
    await reaper.api.call("control", { method: "DELETE", path: `/gateway/profiles/${op.id}` });
  });
});

describe("aborted acquires", () => {
  it("an acquire aborted after a create whose answer was lost deletes that sandbox by its name: nothing is left", async () => {
    const p = h.provider({ backoffMs: 800 });
    h.standin.faults.add({ match: { op: "create" }, action: { type: "drop" } });
    const ac = new AbortController();
    const pending = p.acquire({ ...spec({ [LABEL_JOB]: "aborted-create" }), attempt: 1 }, { signal: ac.signal });
    // The create was served (the sandbox exists) but its answer never came; the client waits to retry.
    while (!h.standin.sandboxList().some((s) => s.name.includes("aborted-create"))) await new Promise((r) => setTimeout(r, 10));
    ac.abort();
    await expect(pending).rejects.toMatchObject({ code: expect.stringMatching(/^SANDQ_ERR_/) });
    expect(h.standin.sandboxList().some((s) => s.name.includes("aborted-create"))).toBe(false);
    // The next reap looks once more (a create still on its way could land late) and finds nothing to count.
    expect(await p.reap()).toBe(0);
  });
});

describe("gateway profiles", () => {
  it("a job policy becomes a profile of its own, created before the sandbox and deleted after it", async () => {
    const policy: EgressPolicyLike = {
      default: "deny",
      egress: ["pypi.org", { host: "api.example.com", methods: ["get"], paths: ["/v1/*", "/v2/*"], ratePerMinute: 120 }, { host: "*.internal.example.com", action: "deny" }],
    };
    const mark = h.standin.requests.length;
    // As the worker asks for it: network "proxy" with the job's policy.
    const box = await h.provider().acquire({ ...spec({ [LABEL_JOB]: "policy-job" }), network: "proxy", egressPolicy: policy }, {});
    expect(box.egressEnforced).toBe(true);
    const [profile] = h.standin.profileList().filter((p) => p.name === box.id);
    expect(profile).toMatchObject({ default_action: "deny", internet_enabled: false, is_default: false });
    expect(profile!.rules.map((r) => [r.priority, r.host_pattern, r.path_pattern, r.methods, r.action, r.rate_limit_rpm])).toEqual([
      [10, "pypi.org", null, null, "allow", null],
      [20, "api.example.com", "/v1/*", ["GET"], "allow", 120],
      [30, "api.example.com", "/v2/*", ["GET"], "allow", 120],
      [40, "*.internal.example.com", null, null, "deny", null],
    ]);
    expect(h.standin.sandboxList().find((s) => s.name === box.id)).toMatchObject({ gatewayProfile: profile!.id, internetEnabled: false });
    const log = since(mark);
    expect(log.indexOf("POST /gateway/profiles 200")).toBeLessThan(log.indexOf("POST /sandboxes 201"));
    const releaseMark = h.standin.requests.length;
    await box.release();
    expect(since(releaseMark)).toEqual([`DELETE /sandboxes/${box.id} 204`, `DELETE /gateway/profiles/${profile!.id} 204`]);
    expect(h.standin.profileList().find((p) => p.name === box.id)).toBeUndefined();
  });

  it("what islo rules cannot say is CAPABILITY_UNSUPPORTED, naming the field, before any request", async () => {
    const p = h.provider();
    const mark = h.standin.requests.length;
    const cases: [EgressPolicyLike, string][] = [
      [{ default: "deny", egress: ["a.example.com"], secrets: [{ name: "TOKEN", hosts: ["a.example.com"] }] }, "network.secrets"],
      [{ default: "deny", egress: ["a.example.com"], maxBytes: 1000 }, "network.maxBytes"],
      [{ default: "deny", egress: ["a.example.com", { host: "b.example.com", ports: [443] }] }, "network.egress[1].ports"],
    ];
    for (const [policy, field] of cases) {
      const err = await p.acquire(spec(), { egressPolicy: policy }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: "SANDQ_ERR_CAPABILITY_UNSUPPORTED", retryable: false });
      expect((err as Error).message).toContain(field);
    }
    await expect(p.acquire({ ...spec(), network: "proxy" }, {})).rejects.toMatchObject({ code: "SANDQ_ERR_CAPABILITY_UNSUPPORTED" });
    expect(since(mark)).toEqual([]);
  });

  it("an operator's profile is used for sandboxes and never changed or deleted", async () => {
    const admin = h.provider();
    const created = await admin.api.call("control", { method: "POST", path: "/gateway/profiles", json: { name: "ops-egress", default_action: "deny" } });
    const opsId = created.json<{ id: string }>().id;
    await admin.api.call("control", { method: "POST", path: `/gateway/profiles/${opsId}/rules`, json: { host_pattern: "pypi.org", action: "allow" } });
    const before = h.standin.profileList().find((p) => p.id === opsId);
    const box = await h.provider({ gatewayProfile: "ops-egress" }).acquire(spec(), {});
    expect(h.standin.sandboxList().find((s) => s.name === box.id)?.gatewayProfile).toBe(opsId);
    const mark = h.standin.requests.length;
    await box.release();
    expect(since(mark)).toEqual([`DELETE /sandboxes/${box.id} 204`]);
    expect(h.standin.profileList().find((p) => p.id === opsId)).toEqual(before);
    await admin.api.call("control", { method: "DELETE", path: `/gateway/profiles/${opsId}` });
  });

  it("a profile whose rules fail half-way is deleted, and no sandbox is created", async () => {
    const p = h.provider();
    const before = await h.resources();
    // The profile's create passes; its second rule is refused.
    h.standin.faults.add({ match: { op: "gateway" }, action: { type: "delay", ms: 0 }, count: 2 });
    h.standin.faults.add({ match: { op: "gateway" }, action: { type: "fail", code: 400 } });
    await expect(p.acquire(spec(), { egressPolicy: { default: "deny", egress: ["a.example.com", "b.example.com"] } })).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
    h.standin.faults.clear();
    expect(await h.resources()).toEqual(before);
  });
});

describe("workspaces", () => {
  it("archive paths escaping /workspace are refused before any request", async () => {
    const box = await h.provider().acquire(spec(), {});
    const mark = h.standin.requests.length;
    for (const dir of ["/etc", "/workspace/../etc", "relative", "/workspace/a/../../tmp"]) {
      await expect(box.putArchive(dir, Readable.from([Buffer.alloc(1024)]))).rejects.toMatchObject({ code: expect.stringMatching(/^SANDQ_ERR_/) });
      await expect(box.getArchive(dir)).rejects.toMatchObject({ code: expect.stringMatching(/^SANDQ_ERR_/) });
    }
    expect(since(mark)).toEqual([]);
    await box.release();
  });

  it("a hostile archive is refused on the worker: nothing reaches files-archive", async () => {
    const { rawTar } = await import("../unit/archive-helpers.js");
    const box = await h.provider().acquire(spec(), {});
    const mark = h.standin.requests.length;
    const evil = await rawTar([{ name: "../escape.txt", body: "x" }]);
    await expect(box.putArchive("/workspace", Readable.from([evil]))).rejects.toMatchObject({ code: expect.stringMatching(/^SANDQ_ERR_TAR_/) });
    expect(since(mark).some((l) => l.includes("files-archive"))).toBe(false);
    await box.release();
  });
});
