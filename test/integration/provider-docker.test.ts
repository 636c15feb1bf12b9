/**
 * The docker provider against a real engine: the shared contract suite, then
 * what only this provider promises (container hardening, labels, reap, warm
 * pool, error translation). Runs against the Podman service that
 * scripts/setup.d/podman.sh starts (DOCKER_HOST, or that script's socket);
 * fails, never skips, when the engine or the image is missing.
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { shellRequest } from "../support/harness.js";
import { describeProviderContract } from "../../providers/contract.js";
import { filesToTar } from "../../providers/archive/index.js";
import {
  DockerProvider,
  EngineClient,
  FrameDecoder,
  encodeFrame,
  parseDockerHost,
  type DockerProviderOptions,
} from "../../providers/docker/index.js";
import { aptMirror, listImages } from "../../providers/images/index.js";
import { LABEL_JOB, LABEL_MANAGED_BY, LABEL_WORKER, MANAGED_BY, labelSafe, type OwnerLiveness, type SandboxSpec } from "../../providers/provider.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const DOCKER_HOST = process.env.DOCKER_HOST ?? `unix://${path.join(ROOT, ".sandqueue/podman/podman.sock")}`;
const IMAGE = process.env.SANDQUEUE_TEST_IMAGE ?? "sandqueue-python";
const RUN = `${process.pid}-${Date.now().toString(36)}`;

const engine = new EngineClient({ dockerHost: DOCKER_HOST });
const providers: DockerProvider[] = [];
let ownerSeq = 0;

/** Fails with what to do when the engine or the image is not there. */
async function requireEngine(): Promise<void> {
  try {
    await engine.json({ method: "GET", path: "/version" });
  } catch (err) {
    throw new Error(
      `no container engine at ${DOCKER_HOST} (${(err as Error).message}). ` +
        "Needs the podman and runc packages and the service: run scripts/setup.d/podman.sh (as root), or set DOCKER_HOST.",
    );
  }
  try {
    await engine.json({ method: "GET", path: `/images/${IMAGE}/json` });
  } catch (err) {
    throw new Error(`image ${IMAGE} is missing in ${DOCKER_HOST} (${(err as Error).message}); run scripts/setup.d/podman.sh (needs debootstrap)`);
  }
}

function makeProvider(extra: Partial<DockerProviderOptions> = {}): DockerProvider {
  const p = new DockerProvider({ dockerHost: DOCKER_HOST, owner: `test-${RUN}-${ownerSeq++}`, ...extra });
  providers.push(p);
  return p;
}

interface ContainerSummary {
  Id: string;
  Labels: Record<string, string> | null;
}
async function containersOf(labels: Record<string, string>): Promise<ContainerSummary[]> {
  const filters = { label: Object.entries(labels).map(([k, v]) => `${k}=${v}`) };
  return engine.json<ContainerSummary[]>({ method: "GET", path: "/containers/json", query: { all: true, filters: JSON.stringify(filters) } });
}

afterAll(async () => {
  await Promise.allSettled(providers.map((p) => p.close()));
  // Anything a failed test left behind.
  for (const c of await containersOf({ "sandqueue.test-run": RUN }).catch(() => [])) {
    await engine.json({ method: "DELETE", path: `/containers/${c.Id}`, query: { force: true } }).catch(() => {});
  }
  engine.close();
});

let contractProvider: DockerProvider | undefined;
describeProviderContract(
  "docker",
  async () => {
    await requireEngine();
    contractProvider = makeProvider({ labels: { "sandqueue.test-run": RUN } });
    return contractProvider;
  },
  {
    image: IMAGE,
    missingImage: "sandqueue-contract-no-such-image",
    listResources: async () =>
      (await containersOf({ [LABEL_WORKER]: labelSafe(contractProvider!.owner) }))
        .map((c) => c.Id)
        .sort(),
    memoryMb: 256,
    pids: 64,
    slackMs: 2_000,
  },
);

const spec = (limits: Partial<SandboxSpec["limits"]> = {}, labels: Record<string, string> = {}): SandboxSpec => ({
  image: IMAGE,
  limits: { memoryMb: 128, pids: 32, ...limits },
  network: "none",
  labels: { "sandqueue.test-run": RUN, ...labels },
  annotations: {},
  maxLifetimeMs: 600_000,
});
const req = shellRequest;

describe("docker provider specifics", () => {
  beforeAll(requireEngine);

  it("decodes the multiplexed stream across arbitrary chunk boundaries", () => {
    const frames = Buffer.concat([
      encodeFrame("stdout", Buffer.from("hello ")),
      encodeFrame("stderr", Buffer.from("oops")),
      encodeFrame("stdout", Buffer.alloc(0)),
      encodeFrame("stdout", Buffer.from("world")),
    ]);
    for (const step of [1, 3, 8, 9, frames.length]) {
      const got = { stdout: "", stderr: "" };
      const d = new FrameDecoder((s, p) => (got[s] += p.toString()));
      for (let i = 0; i < frames.length; i += step) d.push(frames.subarray(i, i + step));
      expect(got).toEqual({ stdout: "hello world", stderr: "oops" });
      expect(d.pending).toBe(0);
    }
  });

  it("creates hardened containers: limits, no network, read-only root, no caps, non-root, labels", async () => {
    const p = makeProvider();
    const box = await p.acquire({ ...spec({ memoryMb: 96, pids: 20 }, { [LABEL_JOB]: "j-1" }), annotations: { team: "x" } }, {});
    try {
      const info = await engine.json<{
        Config: { User: string; Labels: Record<string, string> };
        HostConfig: Record<string, unknown>;
      }>({ method: "GET", path: `/containers/${box.id}/json` });
      const hc = info.HostConfig;
      expect(hc.Memory).toBe(96 * 1024 * 1024);
      expect(hc.MemorySwap).toBe(96 * 1024 * 1024);
      expect(hc.PidsLimit).toBe(20);
      expect(hc.NetworkMode).toBe("none");
      expect(hc.ReadonlyRootfs).toBe(true);
      expect(hc.SecurityOpt).toContain("no-new-privileges");
      expect(Object.keys(hc.Tmpfs as object)).toEqual(expect.arrayContaining(["/workspace", "/tmp"]));
      expect(info.Config.User).toBe("65534:65534");
      expect(info.Config.Labels).toMatchObject({
        [LABEL_MANAGED_BY]: MANAGED_BY,
        [LABEL_WORKER]: expect.stringContaining("test-"),
        "sandqueue.pid": String(process.pid),
        "sandqueue.host": os.hostname(),
        [LABEL_JOB]: "j-1",
        // The job's own labels: Docker has no annotations, so they become prefixed labels.
        "sandqueue.label.team": "x",
      });
      const r = await box.exec(req("id -u; grep -E 'CapEff|NoNewPrivs' /proc/self/status; df -k /workspace | tail -1"));
      const out = r.stdout.toString();
      expect(out).toMatch(/^65534\n/);
      expect(out).toMatch(/CapEff:\s+0+\n/);
      expect(out).toMatch(/NoNewPrivs:\s+1/);
    } finally {
      await box.release();
    }
  });

  it("hydrated files belong to the sandbox user and can be modified; a bad tar is refused", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec(), {});
    try {
      await box.putArchive("/workspace", filesToTar({ "a.txt": "one\n", "src/b.py": "print('b')\n" }));
      const r = await box.exec(req("echo two >> a.txt && cat a.txt && python3 src/b.py && stat -c '%u %n' a.txt src src/b.py"));
      expect(r.stdout.toString()).toBe("one\ntwo\nb\n65534 a.txt\n65534 src\n65534 src/b.py\n");
      // Into a directory that does not exist yet: created as the sandbox user.
      await box.putArchive("/workspace/new/dir", filesToTar({ "c.txt": "c" }));
      expect((await box.exec(req("cat new/dir/c.txt"))).stdout.toString()).toBe("c");

      const { pack } = await import("tar-stream");
      const evil = pack();
      evil.entry({ name: "../escape.txt", mode: 0o644 }, "x");
      evil.finalize();
      await expect(box.putArchive("/workspace", evil as unknown as Readable)).rejects.toMatchObject({ code: "SANDQ_ERR_TAR_PARENT_PATH" });
      expect((await box.exec(req("ls / | grep -c escape || true"))).stdout.toString()).toBe("0\n");
    } finally {
      await box.release();
    }
  });

  it("getArchive gives the workspace without the engine's top-level directory, excludes applied", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec(), {});
    try {
      await box.exec(req("mkdir -p out cache && echo r > out/result.txt && echo junk > cache/x && ln -s out/result.txt link"));
      const tar = await box.getArchive("/workspace", { exclude: ["cache/**", "cache"] });
      const { extract } = await import("tar-stream");
      const ex = extract();
      tar.pipe(ex as unknown as NodeJS.WritableStream);
      const names: string[] = [];
      for await (const e of ex as unknown as AsyncIterable<Readable & { header: { name: string } }>) {
        names.push(e.header.name);
        e.resume();
      }
      expect(names.map((n) => n.replace(/\/$/, "")).sort()).toEqual(["link", "out", "out/result.txt"]);
    } finally {
      await box.release();
    }
  });

  it("timeout kills the exec's whole tree but the sandbox stays usable", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec(), {});
    try {
      const r = await box.exec(req("sleep 60 & sleep 60 & python3 -c 'while True: pass'", { timeoutMs: 800 }));
      expect(r).toMatchObject({ limitHit: "timeout", exitCode: null, signal: "SIGKILL" });
      const after = await box.exec(req("ls /proc | grep -c '^[0-9]'"));
      // init sh + its sleep + this sh (+ grep/ls)
      expect(Number(after.stdout.toString())).toBeLessThanOrEqual(5);
      expect(after.exitCode).toBe(0);
    } finally {
      await box.release();
    }
  });

  it("first exec through the launcher, later ones through exec: exact environment, default signals, secrets in no config", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec(), {});
    try {
      // perl, not a shell: dash would export PWD itself.
      const probe = [
        "perl",
        "-e",
        'print map {"$_=$ENV{$_}\\n"} sort keys %ENV; open F, "/proc/self/status"; print grep /^Sig(Ign|Blk)/, <F>; select undef, undef, undef, 0.3',
      ];
      const secret = (n: number): string => `s3cr3t-${RUN}-${n}`;
      const inspectAll = async (): Promise<string> => {
        const c = await engine.json<{ ExecIDs?: string[] | null }>({ method: "GET", path: `/containers/${box.id}/json` });
        const execs = await Promise.all((c.ExecIDs ?? []).map((id) => engine.json({ method: "GET", path: `/exec/${id}/json` }).catch(() => null)));
        return JSON.stringify([c, execs]);
      };
      for (const n of [1, 2]) {
        const running = box.exec(req("", { argv: probe, env: { PATH: "/usr/bin:/bin", TOKEN: secret(n) } }));
        await new Promise((r) => setTimeout(r, 150));
        const seen = await inspectAll();
        const r = await running;
        expect(r.exitCode, r.stderr.toString()).toBe(0);
        const [envPart, blocked, ignored] = r.stdout.toString().split(/Sig(?:Blk|Ign):\t/);
        expect(envPart).toBe(`PATH=/usr/bin:/bin\nTOKEN=${secret(n)}\n`);
        expect(Number(`0x${blocked}`)).toBe(0);
        // Perl ignores SIGFPE itself; SIGINT and SIGQUIT must not be.
        expect(Number(`0x${ignored}`) & 0b110).toBe(0);
        expect(seen).not.toContain(secret(n));
        if (n === 2) expect(seen).toContain("/usr/bin/env");
      }
    } finally {
      await box.release();
    }
  });

  it("the job cannot stop its own sandbox: the init ignores SIGTERM/SIGINT from inside", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec(), {});
    try {
      const r = await box.exec(req("kill -TERM 1; kill -INT 1; kill -HUP 1; sleep 0.3; echo still-here"));
      expect(r.stdout.toString()).toBe("still-here\n");
      expect((await box.exec(req("echo next"))).stdout.toString()).toBe("next\n");
    } finally {
      await box.release();
    }
  });

  it("parses DOCKER_HOST and finds apt's Debian mirror", async () => {
    expect(parseDockerHost("unix:///run/podman/podman.sock")).toEqual({ kind: "unix", socketPath: "/run/podman/podman.sock" });
    expect(parseDockerHost("tcp://10.0.0.5:2376")).toEqual({ kind: "tcp", host: "10.0.0.5", port: 2376 });
    expect(() => parseDockerHost("ssh://x")).toThrow(/DOCKER_HOST/);
    const dir = await mkdtemp(path.join(os.tmpdir(), "sandqueue-apt-"));
    try {
      await mkdir(path.join(dir, "sources.list.d"));
      await writeFile(path.join(dir, "sources.list"), "# none\ndeb [arch=amd64] http://mirror.example/debian bullseye main\n");
      await writeFile(
        path.join(dir, "sources.list.d", "debian.sources"),
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\nTypes: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
      );
      expect(await aptMirror("bookworm", dir)).toBe("http://deb.example/debian");
      expect(await aptMirror("bullseye", dir)).toBe("http://mirror.example/debian");
      await expect(aptMirror("trixie", dir)).rejects.toThrow(/--mirror/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("release removes the container; a second release is a no-op", async () => {
    const p = makeProvider();
    const box = await p.acquire(spec(), {});
    expect(await containersOf({ [LABEL_WORKER]: labelSafe(ownerOf(p)) })).toHaveLength(1);
    await box.release();
    await box.release();
    expect(await containersOf({ [LABEL_WORKER]: labelSafe(ownerOf(p)) })).toHaveLength(0);
  });

  it("reap removes containers whose worker has no heartbeat or whose process on this host is gone, and nothing else", async () => {
    const deadPid = await exitedPid();
    const mk = async (owner: string, pid: number, host = os.hostname()): Promise<string> => {
      const created = await engine.json<{ Id: string }>({
        method: "POST",
        path: "/containers/create",
        body: {
          Image: IMAGE,
          Cmd: ["sleep", "300"],
          Labels: {
            [LABEL_MANAGED_BY]: MANAGED_BY,
            [LABEL_WORKER]: labelSafe(owner),
            "sandqueue.pid": String(pid),
            "sandqueue.host": host,
            "sandqueue.test-run": RUN,
          },
        },
      });
      return created.Id;
    };
    const dead = await mk(`ghost-${RUN}`, deadPid);
    const alive = await mk(`alive-${RUN}`, process.ppid);
    const elsewhere = await mk(`remote-${RUN}`, deadPid, "some-other-host");
    const silent = await mk(`silent-${RUN}`, process.ppid, "some-other-host");
    const p = makeProvider();
    const own = await p.acquire(spec(), {});
    // Heartbeats as the worker would report them: every worker but `silent` is alive.
    const owners: OwnerLiveness = {
      liveOwners: async (ids) => new Set(ids.filter((id) => id !== labelSafe(`silent-${RUN}`))),
    };
    // Only this run's containers count: other test files' providers share the engine.
    const ids = async () => (await containersOf({ "sandqueue.test-run": RUN })).map((c) => c.Id);
    try {
      // Without heartbeats: only the same-host container whose process is gone.
      await p.reap();
      let left = await ids();
      expect(left).not.toContain(dead);
      expect(left).toEqual(expect.arrayContaining([alive, elsewhere, silent]));
      // With heartbeats: also the other host's container whose worker has none.
      await p.reap(owners);
      left = await ids();
      expect(left).not.toContain(silent);
      expect(left).toEqual(expect.arrayContaining([alive, elsewhere]));
      // Its own containers are never reaped, even when its own heartbeat looks missing.
      await p.reap({ liveOwners: async (ids) => new Set(ids.filter((id) => id !== labelSafe(ownerOf(p)))) });
      expect(await containersOf({ [LABEL_WORKER]: labelSafe(ownerOf(p)) })).toHaveLength(1);
    } finally {
      await own.release();
      for (const id of [alive, elsewhere]) await engine.json({ method: "DELETE", path: `/containers/${id}`, query: { force: true } }).catch(() => {});
    }
  });


  it("warm pool: acquire hands out a started container without waiting; drained on close", async () => {
    const p = makeProvider({ pool: { minIdle: 2, maxSize: 4 } });
    const s = spec({ memoryMb: 100, pids: 30 });
    // A new key: the acquire takes the first container the pool starts for it.
    const first = await p.acquire(s, {});
    expect(p.pool).toMatchObject({ waits: 1, misses: 0 });
    await first.release();
    await p.pool.waitReady();
    expect(p.pool.idleCount()).toBe(2);
    const t0 = performance.now();
    const box = await p.acquire(s, {});
    const acquireMs = performance.now() - t0;
    expect(p.pool.hits).toBe(1);
    expect(acquireMs).toBeLessThan(50);
    const r = await box.exec(req("echo pooled"));
    expect(r.stdout.toString()).toBe("pooled\n");
    // Pooled containers carry the limits of their key.
    const info = await engine.json<{ HostConfig: { Memory: number; PidsLimit: number } }>({ method: "GET", path: `/containers/${box.id}/json` });
    expect(info.HostConfig).toMatchObject({ Memory: 100 * 1024 * 1024, PidsLimit: 30 });
    // Other limits are another key, never a container with the wrong limits.
    const other = await p.acquire(spec({ memoryMb: 64 }), {});
    expect(p.pool.hits).toBe(1);
    const otherInfo = await engine.json<{ HostConfig: { Memory: number } }>({ method: "GET", path: `/containers/${other.id}/json` });
    expect(otherInfo.HostConfig.Memory).toBe(64 * 1024 * 1024);
    await Promise.all([box.release(), other.release()]);
    await p.close();
    await p.close();
    expect(await containersOf({ [LABEL_WORKER]: labelSafe(ownerOf(p)) })).toHaveLength(0);
  });

  it("warm pool: acquires wait only for creations in flight; an aborted wait leaves nothing behind", async () => {
    const p = makeProvider({ pool: { minIdle: 1, maxSize: 2, fillConcurrency: 1 } });
    const s = spec({ memoryMb: 110 });
    // One creation in flight: the first acquire waits for it, the second creates its own.
    const [a, b] = await Promise.all([p.acquire(s, {}), p.acquire(s, {})]);
    expect(p.pool).toMatchObject({ waits: 1, misses: 1 });
    await Promise.all([a.release(), b.release()]);
    await p.pool.waitReady();
    // Drain the ready one, then abort an acquire that waits for the refill.
    const c = await p.acquire(s, {});
    const ac = new AbortController();
    const waiting = p.acquire(s, { signal: ac.signal });
    ac.abort();
    await expect(waiting).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
    await c.release();
    await p.close();
    expect(await containersOf({ [LABEL_WORKER]: labelSafe(ownerOf(p)) })).toHaveLength(0);
  });

  it("prewarm fills the pool before the first acquire", async () => {
    const p = makeProvider({ pool: { minIdle: 1, maxSize: 2 } });
    p.prewarm(spec({ memoryMb: 90 }));
    await p.pool.waitReady();
    expect(p.pool.idleCount()).toBe(1);
    const box = await p.acquire(spec({ memoryMb: 90 }), {});
    expect(p.pool.hits).toBe(1);
    await box.release();
    await p.close();
    expect(await containersOf({ [LABEL_WORKER]: labelSafe(ownerOf(p)) })).toHaveLength(0);
  });

  it("an unknown image is IMAGE_NOT_FOUND with how to build it", async () => {
    const p = makeProvider();
    await expect(p.acquire({ ...spec(), image: "sandqueue-nope" }, {})).rejects.toMatchObject({
      code: "SANDQ_ERR_IMAGE_NOT_FOUND",
      retryable: false,
      message: expect.stringContaining("sandqueue image build sandqueue-nope"),
    });
  });

  it("an engine that is not there is PROVIDER_UNAVAILABLE (retryable)", async () => {
    const p = makeProvider({ dockerHost: `unix://${path.join(os.tmpdir(), `no-engine-${RUN}.sock`)}` });
    await expect(p.check()).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
    await expect(p.acquire(spec(), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE", retryable: true });
  });

  it("lists the test image as both a rootfs and an engine image", async () => {
    const images = await listImages({ imagesDir: path.join(ROOT, ".sandqueue/images"), engine });
    expect(images.find((i) => i.name === IMAGE)).toMatchObject({ engineId: expect.stringMatching(/\w{12}/) });
  });
});

function ownerOf(p: DockerProvider): string {
  return p.owner;
}

/** The pid of a process that has exited (and been reaped). */
function exitedPid(): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn("true");
    child.once("error", reject);
    child.once("exit", () => resolve(child.pid!));
  });
}
