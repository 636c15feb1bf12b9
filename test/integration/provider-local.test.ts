/**
 * The local (bubblewrap + cgroups) provider: the shared contract suite, then
 * what only the local provider promises (cgroup files, daemons, reap).
 * Needs the `bubblewrap` package and root (cgroup writes); fails, not skips,
 * when they are missing.
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { mkdtemp, mkdir, readFile, rm, rmdir, writeFile, readdir, symlink, cp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { shellRequest } from "../support/harness.js";
import { describeProviderContract } from "../../providers/contract.js";
import { LocalProvider, type LocalProviderOptions } from "../../providers/local/index.js";
import type { SandboxSpec } from "../../providers/provider.js";
import { rawTar, streamOf } from "../unit/archive-helpers.js";

const roots: string[] = [];
const providers: LocalProvider[] = [];
const cgroupParent = `sandqueue-test-${process.pid}`;

async function makeLocal(extra: LocalProviderOptions = {}): Promise<LocalProvider> {
  const workRoot = await mkdtemp(path.join(os.tmpdir(), "sandqueue-local-test-"));
  roots.push(workRoot);
  const p = new LocalProvider({ workRoot, cgroupParent, ...extra });
  providers.push(p);
  return p;
}

afterAll(async () => {
  await Promise.allSettled(providers.map((p) => p.close()));
  for (const dir of providers[0]?.cgroupParentDirs ?? []) await rmdir(dir).catch(() => undefined);
  for (const r of roots) await rm(r, { recursive: true, force: true });
});

let contractProvider: LocalProvider | undefined;
describeProviderContract(
  "local",
  async () => {
    contractProvider = await makeLocal();
    return contractProvider;
  },
  { image: "host", listResources: () => contractProvider!.resources(), memoryMb: 256, pids: 64 },
);

let pooledProvider: LocalProvider | undefined;
describeProviderContract(
  "local (pre-start pool)",
  async () => {
    pooledProvider = await makeLocal({ prestart: 2 });
    return pooledProvider;
  },
  { image: "host", listResources: () => pooledProvider!.resources(), memoryMb: 256, pids: 64 },
);

const spec = (limits: Partial<SandboxSpec["limits"]> = {}, image = "host"): SandboxSpec => ({
  image,
  limits: { memoryMb: 128, pids: 32, ...limits },
  network: "none",
  labels: { "sandqueue.test": "local" },
  annotations: {},
  maxLifetimeMs: 600_000,
});
const req = shellRequest;

async function subdirsOf(dir: string): Promise<string[]> {
  return (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => path.join(dir, e.name));
}

function hostPidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("local provider specifics", () => {
  let provider: LocalProvider;
  beforeAll(async () => {
    provider = await makeLocal();
  });

  it("creates one cgroup per sandbox, runs the first exec in it and each later one in a leaf, and removes them", async () => {
    const s = await provider.acquire(spec({ memoryMb: 96, pids: 10 }), {});
    const cgDirs = (await provider.resources()).filter((r) => !r.startsWith(provider.workRoot));
    expect(cgDirs.length).toBe(provider.cgroupVersion === 1 ? 2 : 1);
    // What a running exec's cgroup holds: the job's limits and its processes.
    const inspect = async (dirs: string[]) => {
      const limits: Record<string, string> = {};
      let procs = 0;
      for (const d of dirs) {
        for (const f of ["memory.limit_in_bytes", "memory.max", "pids.max"]) {
          if (existsSync(path.join(d, f))) limits[f] = (await readFile(path.join(d, f), "utf8")).trim();
        }
        procs += (await readFile(path.join(d, "cgroup.procs"), "utf8")).trim().split("\n").filter(Boolean).length;
      }
      return { memory: limits["memory.limit_in_bytes"] ?? limits["memory.max"], pids: limits["pids.max"], procs };
    };
    // The first exec: the sandbox cgroup itself, no leaf.
    let pending = s.exec(req("sleep 1"));
    await new Promise((r) => setTimeout(r, 300));
    expect((await Promise.all(cgDirs.map(subdirsOf))).flat()).toEqual([]);
    // bwrap's own two processes (monitor + namespace init) come on top of the job's.
    expect(await inspect(cgDirs)).toMatchObject({ memory: String(96 * 1024 * 1024), pids: "12" });
    expect((await inspect(cgDirs)).procs).toBeGreaterThanOrEqual(3);
    expect((await pending).exitCode).toBe(0);

    // The second: a fresh leaf with the limits; the sandbox cgroup's own are lifted.
    pending = s.exec(req("sleep 1"));
    await new Promise((r) => setTimeout(r, 300));
    const leaves = await Promise.all(cgDirs.map(subdirsOf));
    for (const l of leaves) expect(l.length).toBe(1);
    expect(await inspect(leaves.flat())).toMatchObject({ memory: String(96 * 1024 * 1024), pids: "12" });
    expect((await inspect(leaves.flat())).procs).toBeGreaterThanOrEqual(3);
    expect(await inspect(cgDirs)).toMatchObject({ pids: "max", procs: 0 });
    expect((await pending).exitCode).toBe(0);
    // The leaf is removed once the exec is over (in the background), the sandbox cgroup by release.
    await expect.poll(async () => (await Promise.all(cgDirs.map(subdirsOf))).flat(), { timeout: 2_000 }).toEqual([]);
    await s.release();
    for (const d of cgDirs) expect(existsSync(d)).toBe(false);
  });

  it("quick successive execs in one sandbox keep their full pids limit", async () => {
    const s = await provider.acquire(spec({ pids: 4 }), {});
    for (let i = 0; i < 25; i++) {
      const r = await s.exec(req("true | true | true"));
      expect(r).toMatchObject({ exitCode: 0, limitHit: null });
    }
    await s.release();
  });

  it("kills setsid / double-forked daemons when the job ends, and on timeout", async () => {
    const s = await provider.acquire(spec(), {});
    // A daemon that detaches from the session and outlives its parent.
    const r = await s.exec(req("setsid sh -c 'sleep 60 & echo $! > /workspace/daemon.pid' </dev/null >/dev/null 2>&1 & sleep 0.3; echo parent-done"));
    expect(r.stdout.toString()).toBe("parent-done\n");
    const after = await s.exec(req("ls /proc | grep -c '^[0-9]'"));
    // Only this exec's own processes are left (sh, grep, ls / namespace init).
    expect(Number(after.stdout.toString())).toBeLessThanOrEqual(4);
    const t = await s.exec(req("(setsid sleep 60 &) ; sleep 60", { timeoutMs: 500 }));
    expect(t.limitHit).toBe("timeout");
    // Nothing is left in the sandbox's cgroup: no process, no exec leaf.
    const cgDirs = (await provider.resources()).filter((d) => !d.startsWith(provider.workRoot));
    for (const d of cgDirs) expect((await readFile(path.join(d, "cgroup.procs"), "utf8")).trim()).toBe("");
    await expect.poll(async () => (await Promise.all(cgDirs.map(subdirsOf))).flat(), { timeout: 2_000 }).toEqual([]);
    await s.release();
  });

  it("an acquire that fails after the workspace and cgroup exist removes them again", async () => {
    const before = await provider.resources();
    // Aborts at the second look, i.e. after the directories and the cgroup were made.
    let looks = 0;
    const lateAbort = { get aborted() { return ++looks > 1; }, reason: new Error("late abort") } as unknown as AbortSignal;
    await expect(provider.acquire(spec(), { signal: lateAbort })).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_FAILED" });
    expect(looks).toBeGreaterThan(1);
    expect(await provider.resources()).toEqual(before);
    await expect(provider.acquire(spec({ memoryMb: 2 ** 44 }), {})).rejects.toMatchObject({ retryable: false });
    expect(await provider.resources()).toEqual(before);
  });

  it("does not follow a symlink planted in the workspace when releasing", async () => {
    const victimDir = await mkdtemp(path.join(os.tmpdir(), "sandqueue-victim-"));
    roots.push(victimDir);
    await writeFile(path.join(victimDir, "precious"), "keep me");
    const s = await provider.acquire(spec(), {});
    const ws = (await provider.resources()).find((r) => r.startsWith(provider.workRoot))!;
    await symlink(victimDir, path.join(ws, "workspace", "link-to-host"));
    await symlink(path.join(victimDir, "precious"), path.join(ws, "workspace", "file-link"));
    await s.release();
    expect(existsSync(ws)).toBe(false);
    expect(await readFile(path.join(victimDir, "precious"), "utf8")).toBe("keep me");
  });

  it("reap() removes sandboxes of dead owner processes only, whatever the heartbeats say", async () => {
    const live = await provider.acquire(spec(), {});
    // Forge the leftovers of a dead worker: a workspace dir and cgroups named with its pid.
    const dead = spawn("true");
    await new Promise((r) => dead.on("exit", r));
    const deadPid = dead.pid!;
    expect(hostPidAlive(deadPid)).toBe(false);
    const names = [`sq-${deadPid}-aaaaaaaaaaaa`, `sq-${deadPid}-bbbbbbbbbbbb`];
    await mkdir(path.join(provider.workRoot, names[0]!, "workspace"), { recursive: true });
    await writeFile(path.join(provider.workRoot, names[0]!, "owner.json"), JSON.stringify({ pid: deadPid, labels: { pool: "a" } }));
    await mkdir(path.join(provider.workRoot, names[1]!, "workspace"), { recursive: true });
    await writeFile(path.join(provider.workRoot, names[1]!, "owner.json"), JSON.stringify({ pid: deadPid, labels: { pool: "b" } }));
    for (const parent of provider.cgroupParentDirs) await mkdir(path.join(parent, names[0]!));

    // No worker has a heartbeat: the live sandbox of this process still stays (its pid is alive).
    expect(await provider.reap({ liveOwners: async () => new Set() })).toBe(2);
    for (const name of names) expect(existsSync(path.join(provider.workRoot, name))).toBe(false);
    for (const parent of provider.cgroupParentDirs) expect(existsSync(path.join(parent, names[0]!))).toBe(false);
    expect(await provider.reap()).toBe(0);
    // The live sandbox of this process is untouched.
    const r = await live.exec(req("echo alive"));
    expect(r.stdout.toString()).toBe("alive\n");
    await live.release();
  });

  it("close() releases every live sandbox and is idempotent", async () => {
    const p = await makeLocal();
    await p.acquire(spec(), {});
    await p.acquire(spec(), {});
    expect((await p.resources()).length).toBeGreaterThan(0);
    await p.close();
    await p.close();
    expect(await p.resources()).toEqual([]);
    await expect(p.acquire(spec(), {})).rejects.toMatchObject({ code: "SANDQ_ERR_PROVIDER_UNAVAILABLE" });
  });

  it("close() while acquires are under way leaves nothing: the work root's tmpfs is empty and unmounted", async () => {
    await expectCloseDuringAcquiresLeavesNothing(await makeLocal(), "host");
  });

  it("release() while an exec is still launching its bwrap leaves nothing: the exec ends aborted or refused", async () => {
    const p = await makeLocal();
    for (const delayMs of [0, 1, 3, 10]) {
      const s = await p.acquire(spec(), {});
      const running = s.exec(req("echo ran"));
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      await s.release();
      const outcome = await running.then(
        (r) => r.limitHit,
        (e: { code?: string }) => e.code,
      );
      expect(["aborted", "SANDQ_ERR_SANDBOX_RELEASED"]).toContain(outcome);
      // Released means gone: no directory (or FIFO of the exec) is created after release() returned.
      expect((await readdir(p.workRoot)).filter((n) => n.startsWith("sq-"))).toEqual([]);
    }
  });

  it("close() while acquires of a directory image are still resolving it leaves nothing", async () => {
    // The image is looked up before the create starts: close() must wait for the whole acquire, not the create only.
    const imagesDir = await mkdtemp(path.join(os.tmpdir(), "sandqueue-images-"));
    roots.push(imagesDir);
    await makeTinyImage(imagesDir);
    await expectCloseDuringAcquiresLeavesNothing(await makeLocal({ imagesDir }), "tiny");
  });

  it("rejects image names that try to leave imagesDir", async () => {
    const imagesDir = await mkdtemp(path.join(os.tmpdir(), "sandqueue-images-"));
    roots.push(imagesDir);
    const p = await makeLocal({ imagesDir });
    for (const image of ["../etc", "/etc", "a/../../b", ""]) {
      await expect(p.acquire(spec({}, image), {})).rejects.toMatchObject({ code: "SANDQ_ERR_IMAGE_NOT_FOUND", retryable: false });
    }
    const err = await p.acquire(spec({}, "nope"), {}).catch((e: Error) => e);
    expect((err as Error).message).toContain(path.join(imagesDir, "nope"));
    expect(await p.resources()).toEqual([]);
  });

  it("runs a directory image as the root filesystem", async () => {
    // A minimal image: dash and the C library copied from the host.
    const imagesDir = await mkdtemp(path.join(os.tmpdir(), "sandqueue-images-"));
    roots.push(imagesDir);
    await makeTinyImage(imagesDir);
    const p = await makeLocal({ imagesDir });
    const s = await p.acquire(spec({}, "tiny"), {});
    const r = await s.exec(req("read l < /etc/image-marker; echo \"$l\"; echo x > /etc/y || echo ro; test -e /usr/bin/python3 || echo no-python"));
    expect(r.stdout.toString()).toBe("tiny image\nro\nno-python\n");
    await s.release();
    expect(await readdir(p.workRoot).then((e) => e.filter((n) => n.startsWith("sq-")))).toEqual([]);
  });
});

/** Three acquires, then close() at once: each ends released or refused, and the work root's tmpfs is empty and unmounted. */
async function expectCloseDuringAcquiresLeavesNothing(p: LocalProvider, image: string): Promise<void> {
  const acquires = [1, 2, 3].map(() => p.acquire(spec({}, image), {}));
  await p.close();
  for (const r of await Promise.allSettled(acquires)) {
    if (r.status === "fulfilled") await expect(r.value.exec(shellRequest("true"))).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_RELEASED" });
  }
  expect(await p.resources()).toEqual([]);
  expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(` ${p.workRoot} `);
  expect(await readdir(p.workRoot)).toEqual([]);
}

/** A minimal directory image `tiny`: dash and the C library copied from the host, and /etc/image-marker. */
async function makeTinyImage(imagesDir: string): Promise<void> {
  const rootfs = path.join(imagesDir, "tiny");
  const ldd = await new Promise<string>((resolve) => {
    const c = spawn("ldd", ["/bin/sh"]);
    let out = "";
    c.stdout.on("data", (d: Buffer) => (out += d.toString()));
    c.on("close", () => resolve(out));
  });
  const libs = [...ldd.matchAll(/(\/\S+)/g)].map((m) => m[1]!);
  expect(libs.length).toBeGreaterThan(0);
  await mkdir(path.join(rootfs, "bin"), { recursive: true });
  await cp("/bin/sh", path.join(rootfs, "bin", "sh"), { dereference: true });
  for (const lib of libs) await cp(lib, path.join(rootfs, lib), { dereference: true });
  await mkdir(path.join(rootfs, "etc"));
  await writeFile(path.join(rootfs, "etc", "image-marker"), "tiny image\n");
}

/** Host processes whose command line contains `needle` (bwraps of a provider's sandboxes carry its work root). */
function hostProcessesWith(needle: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, "utf8").includes(needle)) out.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

async function eventually(check: () => boolean, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!check() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  return check();
}

describe("local provider: pre-start pool and spawn helper", () => {
  it("keeps sandboxes started per image, hands each to one job with that job's limits, and refills", async () => {
    const p = await makeLocal({ prestart: 2 });
    await (await p.acquire(spec(), {})).release(); // the first acquire of an image starts its pool
    expect(await eventually(() => p.idleSandboxes.length === 2)).toBe(true);
    const pooled = new Set(p.idleSandboxes);

    // Raised above the pool's own limits (64 MiB, 16 pids): 150 MiB fit.
    const big = await p.acquire(spec({ memoryMb: 256, pids: 64 }), {});
    expect(pooled.has(big.id)).toBe(true);
    const fits = await big.exec({ ...req("true"), argv: ["python3", "-c", "b = bytearray(150 * 1024 * 1024); print(len(b) >> 20)"] });
    expect(fits).toMatchObject({ exitCode: 0, limitHit: null });
    expect(fits.stdout.toString()).toBe("150\n");
    await big.release();

    // Lowered: 4 processes at most.
    const small = await p.acquire(spec({ memoryMb: 32, pids: 4 }), {});
    expect(pooled.has(small.id)).toBe(true);
    const forks = await small.exec(req("for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait"));
    expect(forks.limitHit).toBe("pids");
    await small.release();

    // Each pooled sandbox served one job; the pool is full again with new ones.
    expect(await eventually(() => p.idleSandboxes.length === 2 && p.idleSandboxes.every((id) => !pooled.has(id)))).toBe(true);
    expect(await p.resources()).toEqual([]);
    await p.close(); // its idle cgroups share the parent with the next tests' providers
  });

  it("idle pool sandboxes wait at niceness 10; the job of an adopted one runs at 0", async () => {
    const p = await makeLocal({ prestart: 1 });
    await (await p.acquire(spec(), {})).release();
    expect(await eventually(() => p.idleSandboxes.length === 1)).toBe(true);
    const niceOf = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")[16]);
    const idle = hostProcessesWith(p.workRoot);
    expect(idle.length).toBeGreaterThan(0);
    expect(idle.map(niceOf).every((n) => n === 10)).toBe(true);

    const s = await p.acquire(spec(), {});
    // Every process of the sandbox: bwrap's init, the job's shell, and what it starts.
    const r = await s.exec(req("for f in /proc/[0-9]*/stat; do cut -d' ' -f19 $f; done | sort -u"));
    expect(r.stdout.toString()).toBe("0\n");
    await s.release();
    await p.close();
  });

  it("a pooled sandbox starts with an empty workspace, sees archives put before its exec, and leaves nothing", async () => {
    const p = await makeLocal({ prestart: 1 });
    await (await p.acquire(spec(), {})).release();
    expect(await eventually(() => p.idleSandboxes.length === 1)).toBe(true);
    const s = await p.acquire(spec(), {});
    await s.putArchive("/workspace", streamOf(await rawTar([{ name: "in.txt", body: "put before exec\n" }])));
    const r = await s.exec(req("ls -A; cat in.txt; echo $(env | sort | tr '\\n' ' ')", { env: { PATH: "/usr/bin:/bin", ONLY: "this" } }));
    expect(r.stdout.toString()).toBe("in.txt\nput before exec\nONLY=this PATH=/usr/bin:/bin PWD=/workspace\n");
    await s.release();
    expect(await p.resources()).toEqual([]);
    await p.close();
  });

  it("close() stops the idle sandboxes and the helper: no process or directory is left", async () => {
    const p = await makeLocal({ prestart: 2 });
    await (await p.acquire(spec(), {})).release();
    expect(await eventually(() => p.idleSandboxes.length === 2)).toBe(true);
    expect(hostProcessesWith(p.workRoot).length).toBeGreaterThan(0);
    await p.close();
    expect(await eventually(() => hostProcessesWith(p.workRoot).length === 0)).toBe(true);
    expect(readdirSync(p.workRoot).filter((n) => n.startsWith("sq-"))).toEqual([]);
  });

  it("a killed spawn helper fails the running exec as retryable and is replaced for the next one", async () => {
    const p = await makeLocal();
    const s = await p.acquire(spec(), {});
    const running = s.exec(req("sleep 5; echo never"));
    await new Promise((r) => setTimeout(r, 300));
    const helper = hostProcessesWith("spawner.py").filter((pid) => readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")[1] === String(process.pid));
    expect(helper.length).toBeGreaterThan(0);
    for (const pid of helper) process.kill(pid, "SIGKILL");
    const r = await running.catch((e: unknown) => e);
    // The sandbox died with its parent (bwrap --die-with-parent): no output of the job, never a success.
    if (r instanceof Error) expect(r).toMatchObject({ retryable: true });
    else expect(r).not.toMatchObject({ exitCode: 0 });
    await s.release();
    const again = await p.acquire(spec(), {});
    expect((await again.exec(req("echo back"))).stdout.toString()).toBe("back\n");
    await again.release();
  });
});
