/**
 * The hostile-job categories against the docker provider (Podman's Docker
 * API here), through the real pipeline. Where the provider's isolation
 * differs from the local one the expected outcome says so (e.g. the engine's
 * default seccomp profile, not ours). Fails, never skips, when the engine or
 * the image is missing.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import { EngineClient } from "../../providers/docker/index.js";
import { requireCommand, tempDir } from "../support/harness.js";
import { rawTar } from "../unit/archive-helpers.js";
import { sharedHostileCases } from "./shared-cases.js";
import { nonce, startRig, type Rig } from "./support.js";

requireCommand("redis-server", "redis-server");

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const DOCKER_HOST = process.env.DOCKER_HOST ?? `unix://${path.join(ROOT, ".sandqueue/podman/podman.sock")}`;
const IMAGE = process.env.SANDQUEUE_TEST_IMAGE ?? "sandqueue-python";
const CANARY_NAME = "SANDQ_SECURITY_CANARY_DOCKER";
const CANARY = `canary-${nonce()}-${nonce()}`;
const MiB = 1024 * 1024;

async function requireEngine(): Promise<void> {
  const engine = new EngineClient({ dockerHost: DOCKER_HOST });
  try {
    await engine.json({ method: "GET", path: "/version" });
    await engine.json({ method: "GET", path: `/images/${IMAGE}/json` });
  } catch (err) {
    throw new Error(
      `no container engine with image ${IMAGE} at ${DOCKER_HOST} (${(err as Error).message}); ` +
        "needs the podman, runc and debootstrap packages: run scripts/setup.d/podman.sh (as root), or set DOCKER_HOST",
    );
  } finally {
    engine.close();
  }
}

describe("security: hostile jobs (docker provider)", () => {
  let rig: Rig;
  const snapshots = tempDir("sec-dsnap");

  beforeAll(async () => {
    await requireEngine();
    process.env[CANARY_NAME] = CANARY;
    rig = await startRig("sec-docker", { provider: "docker", providerSettings: { dockerHost: DOCKER_HOST, poolMinIdle: 0, poolMaxSize: 0 }, snapshotsUrl: `file://${snapshots}` }, { image: IMAGE });
  });
  afterEach(async () => {
    await rig.assertHealthy();
  });
  afterAll(async () => {
    delete process.env[CANARY_NAME];
    await rig?.close();
  });

  // The workspace and /tmp are size-capped tmpfs mounts here; a container
  // takes longer to kill than a bwrap tree.
  sharedHostileCases(() => rig, { tmpfsSizeCap: true, timeoutKillMs: 4000 });

  it("no network: TCP to the host's Redis and the internet, UDP, DNS, the engine's socket", async () => {
    const code = `
import socket
def probe(name, fn):
    try:
        fn(); print(name, "REACHED")
    except OSError as e:
        print(name, "blocked")
def tcp(host, port):
    s = socket.socket(); s.settimeout(2); s.connect((host, port))
def unix(p):
    s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(p)
probe("redis", lambda: tcp("127.0.0.1", 6379))
probe("internet", lambda: tcp("1.1.1.1", 443))
probe("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("1.1.1.1", 53)))
probe("dns", lambda: socket.getaddrinfo("example.com", 80))
probe("podman", lambda: unix(${JSON.stringify(DOCKER_HOST.replace(/^unix:\/\//, ""))}))
probe("docker", lambda: unix("/var/run/docker.sock"))
`;
    const r = await rig.run({ kind: "python", code });
    expect(r.status, r.stderr).toBe("succeeded");
    expect(r.stdout).not.toContain("REACHED");
    expect(r.stdout.trim().split("\n")).toHaveLength(6);
  });

  it("the worker's environment, the host's processes and sysctls are out of reach", async () => {
    const script = [
      "env; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null",
      `ls /proc/${process.pid} >/dev/null 2>&1 && echo sees-worker`,
      "v=$(cat /proc/sys/kernel/core_pattern); printf '%s\\n' \"$v\" > /proc/sys/kernel/core_pattern 2>/dev/null && echo wrote-core-pattern",
      "echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo wrote-proc-sys",
      "echo 1 > /sys/fs/cgroup/cgroup.procs 2>/dev/null && echo wrote-cgroup",
      "echo procs: $(ls -d /proc/[0-9]* | wc -l)",
    ].join("\n");
    const r = await rig.run({ kind: "shell", script });
    expect(r.stdout).not.toContain(CANARY);
    for (const bad of ["sees-worker", "wrote-core-pattern", "wrote-proc-sys", "wrote-cgroup"]) expect(r.stdout).not.toContain(bad);
    expect(Number(/procs: (\d+)/.exec(r.stdout)?.[1])).toBeLessThan(10);
  });

  it("escalation attempts fail: no capabilities, no_new_privs, the engine's seccomp profile, mount/unshare/chroot/keyctl/bpf", async () => {
    // The image's python has no ctypes: perl-base (essential in Debian) makes the raw syscalls.
    const calls: Array<[string, number, number[]]> = [
      ["unshare_ns", 272, [0x00020000]], ["bpf", 321, [0, 0, 0]], ["userfaultfd", 323, [0]],
      ["open_by_handle_at", 304, [0, 0, 0]], ["perf_event_open", 298, [0, 0, 0, 0, 0]],
    ];
    const script = [
      ...calls.map(([name, nr, args]) => `perl -e 'my $r = syscall(${[nr, ...args].join(", ")}); print "${name} ", ($r == -1 ? $!+0 : 0), "\\n"'`),
      "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
      ...["su -c id root </dev/null", "mount -t tmpfs none /workspace", "chroot / true"].map((c) => `${c} >/dev/null 2>&1; echo "cmd $?"`),
    ].join("\n");
    const r = await rig.run({ kind: "shell", script });
    expect(r.status, r.stderr).toBe("succeeded");
    for (const [name] of calls) {
      expect(r.stdout, name).toMatch(new RegExp(`^${name} [1-9]\\d*$`, "m")); // an errno: denied
    }
    expect(r.stdout).toMatch(/^CapEff:\s+0+$/m);
    expect(r.stdout).toMatch(/^NoNewPrivs:\s+1$/m);
    expect(r.stdout).toMatch(/^Seccomp:\s+2$/m);
    expect(r.stdout).not.toMatch(/^cmd 0$/m);
  });

  // Podman's default seccomp profile allows these to everyone; the provider
  // passes a tightened profile (providers/docker/seccomp-profile.ts).
  it("user namespaces (unshare -r, CLONE_NEWUSER), keyctl and mount are refused inside the container", async () => {
    const script = [
      `perl -e 'my $r = syscall(272, ${0x10000000}); print "unshare_user ", ($r == -1 ? $!+0 : 0), "\\n"'`,
      `perl -e 'my $r = syscall(250, 0, 0, 0, 0, 0); print "keyctl ", ($r == -1 ? $!+0 : 0), "\\n"'`,
      'unshare -r id >/dev/null 2>&1; echo "unshare-r $?"',
    ].join("\n");
    const r = await rig.run({ kind: "shell", script });
    expect(r.stdout).toMatch(/^unshare_user 1$/m);
    expect(r.stdout).toMatch(/^keyctl 1$/m);
    expect(r.stdout).not.toMatch(/^unshare-r 0$/m);
  });

  it("a snapshot never holds the host's files behind planted symlinks", async () => {
    const shadowHead = readFileSync("/etc/shadow", "utf8").split("\n")[0]!;
    const r = await rig.run({ kind: "shell", script: "ln -s /etc/shadow shadow; ln -s / root; echo ok > plain; ln -s plain inlink", workspace: { persist: true } });
    expect(r.status, r.stderr).toBe("succeeded");
    const tar = readFileSync(path.join(snapshots, "sha256", `${r.snapshot!.id.replace(/^sha256:/, "")}.tar`)).toString("latin1");
    expect(tar).not.toContain(shadowHead);
    expect(tar).toContain("inlink");
  });

  it("links to anywhere persist as links and resolve inside the next container", async () => {
    const a = await rig.run({ kind: "shell", script: "ln -s /usr/bin/python3 py; mkdir -p a/b; ln -s ../../../etc a/b/up", workspace: { persist: true } });
    expect(a.status, a.stderr).toBe("succeeded");
    const b = await rig.run({ kind: "shell", script: "readlink py a/b/up; ./py -c 'print(6*7)'; test -f a/b/up/os-release && echo etc", workspace: { from: a.snapshot!.id } });
    expect(b.stdout).toBe("/usr/bin/python3\n../../../etc\n42\netc\n");
  });

  it("hostile archives in workspace.from end as error with their TAR code", async () => {
    const cases: Array<[string, Parameters<typeof rawTar>[0]]> = [
      [ErrorCodes.TAR_PARENT_PATH, [{ name: "../../x", body: "x" }]],
      [ErrorCodes.TAR_ABSOLUTE_PATH, [{ name: "/tmp/x", body: "x" }]],
      [ErrorCodes.TAR_THROUGH_SYMLINK, [{ name: "l", type: "symlink", linkname: "/etc" }, { name: "l/x", body: "x" }]],
      [ErrorCodes.TAR_HARDLINK, [{ name: "h", type: "link", linkname: "/etc/shadow" }]],
      [ErrorCodes.TAR_SPECIAL_FILE, [{ name: "mem", type: "character-device", devmajor: 1, devminor: 1 }]],
      [ErrorCodes.TAR_SETID, [{ name: "suid", mode: 0o4755, body: "x" }]],
    ];
    for (const [code, entries] of cases) {
      const buf = await rawTar(entries);
      const hex = createHash("sha256").update(buf).digest("hex");
      mkdirSync(path.join(snapshots, "sha256"), { recursive: true });
      writeFileSync(path.join(snapshots, "sha256", `${hex}.tar`), buf);
      const r = await rig.run({ kind: "shell", script: "echo SHOULD-NOT-RUN", workspace: { from: `sha256:${hex}` } });
      expect(r, code).toMatchObject({ status: "error" });
      expect(r.error?.code).toBe(code);
    }
  });
});
