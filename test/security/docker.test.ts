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
import { eventuallyEmpty, FORK_BOMB, hostProcessesWith, inodeFlood, MEMORY_BOMB, SPREAD_MEMORY_BOMB, nonce, startRig, type Rig } from "./support.js";

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
    rig = await startRig("sec-docker", { provider: "docker", dockerHost: DOCKER_HOST, pool: { minIdle: 0, maxSize: 0 }, snapshotsUrl: `file://${snapshots}` }, { image: IMAGE });
  });
  afterEach(async () => {
    await rig.assertHealthy();
  });
  afterAll(async () => {
    delete process.env[CANARY_NAME];
    await rig?.close();
  });

  it("fork bomb: killed/pids", async () => {
    const r = await rig.run({ kind: "shell", script: FORK_BOMB, limits: { pids: 32, timeoutMs: 5000 } });
    expect(r).toMatchObject({ status: "killed", reason: "pids" });
  });

  it("memory bomb: killed/memory", async () => {
    const r = await rig.run({ kind: "python", code: MEMORY_BOMB, limits: { memoryMb: 64 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
  });

  it("memory bomb spread over many processes: killed/memory", async () => {
    const r = await rig.run({ kind: "python", code: SPREAD_MEMORY_BOMB, limits: { memoryMb: 96, timeoutMs: 8000 } });
    expect(r).toMatchObject({ status: "killed", reason: "memory" });
  });

  it("inode exhaustion (empty files in a loop) in the workspace and /tmp: bounded", async () => {
    for (const dir of ["/workspace/many", "/tmp/many"]) {
      const code = inodeFlood(dir);
      const r = await rig.run({ kind: "python", code, limits: { memoryMb: 48, timeoutMs: 6000 } });
      // Dentries and inodes of the tmpfs are charged to the container's memory,
      // unless the tmpfs's own inode cap says ENOSPC first.
      expect(r.status === "killed" ? r.reason : r.stderr, dir).toMatch(/memory|No space left/);
    }
  });

  it("filling the workspace and /tmp: bounded (tmpfs charged to the container's memory, size-capped)", async () => {
    for (const dir of ["/workspace", "/tmp"]) {
      const r = await rig.run({ kind: "shell", script: `dd if=/dev/zero of=${dir}/fill bs=1M count=512 2>&1`, limits: { memoryMb: 64 } });
      expect(r.stdout, dir).not.toContain("512+0 records out");
      // Either the memory limit OOM-kills the writer or the tmpfs size cap says ENOSPC.
      expect(r.status === "killed" ? r.reason : r.stdout, dir).toMatch(/memory|No space left/);
    }
  });

  it("output flood on stdout and stderr: killed/output", async () => {
    for (const redirect of ["", " 1>&2"]) {
      const r = await rig.run({ kind: "shell", script: `yes AAAAAAAAAAAAAAAA${redirect}`, limits: { maxOutputBytes: MiB } });
      expect(r).toMatchObject({ status: "killed", reason: "output" });
    }
  });

  it("CPU spinning and sleeping both end by the wall-time limit", async () => {
    for (const script of ["while :; do :; done", "sleep 60"]) {
      const r = await rig.run({ kind: "shell", script, limits: { timeoutMs: 800 } });
      expect(r, script).toMatchObject({ status: "timed_out" });
      expect(r.timings.execMs, script).toBeLessThan(4000);
    }
  });

  it("daemons (setsid, double fork, nohup &) die with the job", async () => {
    const n = nonce();
    const script = `setsid sleep ${n}1 </dev/null >/dev/null 2>&1 & ( ( sleep ${n}2 </dev/null >/dev/null 2>&1 & ) & ); nohup sleep ${n}3 >/dev/null 2>&1 & sleep 0.3; echo launched`;
    const r = await rig.run({ kind: "shell", script });
    expect(r).toMatchObject({ status: "succeeded", stdout: "launched\n" });
    for (const m of [`${n}1`, `${n}2`, `${n}3`]) expect(await eventuallyEmpty(() => hostProcessesWith(`sleep ${m}`), 5000)).toEqual([]);
  });

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

  // The profile lists only the native architecture (seccomp-profile.ts): a
  // syscall through the i386 table (int 0x80 from a 64-bit process) kills
  // the process (SIGSYS) instead of running. A 136-byte static ELF that calls
  // getpid that way and exits with the result.
  it("syscalls through the 32-bit table (int 0x80) are refused", async () => {
    const code = [0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0x89, 0xc7, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05];
    const elf = Buffer.alloc(120 + code.length);
    elf.write("\x7fELF\x02\x01\x01", 0, "latin1");
    elf.writeUInt16LE(2, 16); // ET_EXEC
    elf.writeUInt16LE(0x3e, 18); // x86-64
    elf.writeUInt32LE(1, 20);
    elf.writeBigUInt64LE(0x400078n, 24); // entry: right after the headers
    elf.writeBigUInt64LE(64n, 32); // program headers at 64
    elf.writeUInt16LE(64, 52);
    elf.writeUInt16LE(56, 54);
    elf.writeUInt16LE(1, 56);
    elf.writeUInt32LE(1, 64); // PT_LOAD
    elf.writeUInt32LE(5, 68); // R+X
    elf.writeBigUInt64LE(0x400000n, 80);
    elf.writeBigUInt64LE(0x400000n, 88);
    elf.writeBigUInt64LE(BigInt(elf.length), 96);
    elf.writeBigUInt64LE(BigInt(elf.length), 104);
    elf.writeBigUInt64LE(0x1000n, 112);
    Buffer.from(code).copy(elf, 120);
    const octal = [...elf].map((b) => `\\${b.toString(8).padStart(3, "0")}`).join("");
    const script = `printf '${octal}' > int80 && chmod +x int80 && ./int80; echo "rc $?"; uname -m`;
    const r = await rig.run({ kind: "shell", script });
    expect(r.stdout, r.stderr).toMatch(/^x86_64$/m); // the ELF is x86-64 code
    expect(r.stdout, r.stderr).toMatch(/^rc 159$/m); // 128 + SIGSYS
  });

  it("a snapshot never holds the host's files behind planted symlinks", async () => {
    const shadowHead = readFileSync("/etc/shadow", "utf8").split("\n")[0]!;
    const r = await rig.run({ kind: "shell", script: "ln -s /etc/shadow shadow; ln -s / root; echo ok > plain; ln -s plain inlink", workspace: { persist: true } });
    expect(r.status, r.stderr).toBe("succeeded");
    const tar = readFileSync(path.join(snapshots, "sha256", `${r.snapshot!.id.replace(/^sha256:/, "")}.tar`)).toString("latin1");
    expect(tar).not.toContain(shadowHead);
    expect(tar).toContain("inlink");
  });

  it("hostile archives in workspace.from end as error with their TAR code", async () => {
    const cases: Array<[string, Parameters<typeof rawTar>[0]]> = [
      [ErrorCodes.TAR_PARENT_PATH, [{ name: "../../x", body: "x" }]],
      [ErrorCodes.TAR_ABSOLUTE_PATH, [{ name: "/tmp/x", body: "x" }]],
      [ErrorCodes.TAR_LINK_OUTSIDE, [{ name: "l", type: "symlink", linkname: "/etc" }, { name: "l/x", body: "x" }]],
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
