/**
 * Hostile jobs trying to get out, through the real pipeline on the local
 * (bubblewrap) provider: network egress of every kind, reading the worker's
 * secrets through /proc and /sys, privilege escalation, symlinks planted for
 * the host to follow, hostile workspace archives and inline file paths.
 * After each case the worker still runs an ordinary job.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import tarStream from "tar-stream";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import { requireCommand, tempDir } from "../support/harness.js";
import { rawTar, type RawEntry } from "../unit/archive-helpers.js";
import { hostProcessesWith, nonce, sleep, startRig, type Rig } from "./support.js";

requireCommand("bwrap", "bubblewrap");
requireCommand("redis-server", "redis-server");
requireCommand("python3", "python3");

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const PODMAN_SOCK = path.join(ROOT, ".sandqueue/podman/podman.sock");
const CANARY_NAME = "SANDQ_SECURITY_CANARY";
const CANARY = `canary-${nonce()}-${nonce()}`;

/** Lists a stored snapshot's entries: name, type, link target, body. */
async function tarEntries(buf: Buffer): Promise<Array<{ name: string; type: string; linkname: string | null; body: Buffer }>> {
  const out: Array<{ name: string; type: string; linkname: string | null; body: Buffer }> = [];
  const extract = tarStream.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on("entry", (h, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on("data", (c) => chunks.push(c as Buffer));
      stream.on("end", () => {
        out.push({ name: h.name, type: h.type ?? "file", linkname: h.linkname ?? null, body: Buffer.concat(chunks) });
        next();
      });
    });
    extract.on("finish", resolve);
    extract.on("error", reject);
  });
  extract.end(buf);
  await done;
  return out;
}

describe("security: escapes (local provider)", () => {
  let rig: Rig;
  const snapshots = tempDir("sec-snap");
  let abstractServer: Server;
  const abstractName = `\0sandq-sec-${nonce()}`;

  beforeAll(async () => {
    process.env[CANARY_NAME] = CANARY; // the worker runs in this process: its environment holds the canary
    rig = await startRig("sec-esc", { snapshotsUrl: `file://${snapshots}` });
    // A host service on an abstract unix socket: reachable from the host's network namespace only.
    abstractServer = createServer((s) => s.end("host-secret\n"));
    await new Promise<void>((r) => abstractServer.listen(abstractName, r));
  });
  afterEach(async () => {
    await rig.assertHealthy();
  });
  afterAll(async () => {
    delete process.env[CANARY_NAME];
    abstractServer?.close();
    await rig?.close();
  });

  /** Stores a tar in the file snapshot store under its content id, as if produced elsewhere. */
  function storeSnapshot(buf: Buffer): string {
    const hex = createHash("sha256").update(buf).digest("hex");
    mkdirSync(path.join(snapshots, "sha256"), { recursive: true });
    writeFileSync(path.join(snapshots, "sha256", `${hex}.tar`), buf);
    return `sha256:${hex}`;
  }

  function readSnapshot(id: string): Buffer {
    return readFileSync(path.join(snapshots, "sha256", `${id.replace(/^sha256:/, "")}.tar`));
  }

  describe("network", () => {
    it("no TCP, UDP, DNS, host loopback (Redis 6379), host unix sockets or abstract sockets", async () => {
      const code = `
import socket, errno
def probe(name, fn):
    try:
        fn(); print(name, "REACHED")
    except OSError as e:
        print(name, "blocked", e.__class__.__name__)
def tcp(host, port, fam=socket.AF_INET):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2); s.connect((host, port)); s.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", ("1.1.1.1", 53))
def dns():
    socket.getaddrinfo("example.com", 80)
def unix(p):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(2); s.connect(p); print(s.recv(100))
probe("redis", lambda: tcp("127.0.0.1", 6379))
probe("redis6", lambda: tcp("::1", 6379, socket.AF_INET6))
probe("internet", lambda: tcp("1.1.1.1", 443))
probe("registry", lambda: tcp("104.16.0.35", 443))
probe("udp", udp)
probe("dns", dns)
probe("podman", lambda: unix(${JSON.stringify(PODMAN_SOCK)}))
probe("redis-sock", lambda: unix("/run/redis/redis-server.sock"))
probe("docker", lambda: unix("/var/run/docker.sock"))
probe("abstract", lambda: unix(${JSON.stringify(abstractName)}))
import os
print("ifaces", sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else open("/proc/net/dev").read().count(":"))
`;
      const r = await rig.run({ kind: "python", code });
      expect(r.status, r.stderr).toBe("succeeded");
      for (const name of ["redis", "redis6", "internet", "registry", "udp", "dns", "podman", "redis-sock", "docker", "abstract"]) {
        expect(r.stdout).toMatch(new RegExp(`^${name} blocked`, "m"));
      }
      expect(r.stdout).not.toContain("REACHED");
      expect(r.stdout).toMatch(/^ifaces 1$/m); // lo only
    });

    it("a raw or packet socket cannot be opened", async () => {
      const code = `
import socket
for fam, typ, proto in [(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (socket.AF_PACKET, socket.SOCK_RAW, 0)]:
    try:
        socket.socket(fam, typ, proto); print("opened")
    except OSError as e:
        print("refused", e.errno)
`;
      const r = await rig.run({ kind: "python", code });
      expect(r.stdout).not.toContain("opened");
      expect(r.stdout.trim().split("\n")).toHaveLength(2);
    });
  });

  describe("secrets of the host", () => {
    it("the worker's environment is not visible: not inherited, not in any /proc/*/environ", async () => {
      const script = [
        "env",
        "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null",
        "echo procs: $(ls -d /proc/[0-9]* | wc -l)",
        "echo pid1: $(tr '\\0' ' ' < /proc/1/cmdline)",
        "cat /proc/1/environ | wc -c",
      ].join("\n");
      const r = await rig.run({ kind: "shell", script });
      expect(r.status).toBe("succeeded");
      expect(r.stdout).not.toContain(CANARY);
      expect(r.stdout).not.toContain(CANARY_NAME);
      expect(r.stdout).not.toContain("REDIS_URL");
      expect(Number(/procs: (\d+)/.exec(r.stdout)?.[1])).toBeLessThan(8); // only the sandbox's own
      expect(r.stdout).toMatch(/^pid1: \S*bwrap/m);
      expect(r.stdout).not.toContain("--setenv"); // the environment never travels on a command line (host `ps` shows those)
    });

    it("the job's environment (secrets) never appears on a host command line", async () => {
      const token = `tok-${nonce()}-${nonce()}`;
      const pending = rig.run({ kind: "shell", env: { API_TOKEN: token }, script: 'sleep 1; test -n "$API_TOKEN" && echo has-token' });
      let seen: string[] = [];
      const deadline = Date.now() + 900;
      while (Date.now() < deadline && seen.length === 0) {
        seen = hostProcessesWith(token);
        await sleep(50);
      }
      const r = await pending;
      expect(r.stdout).toBe("has-token\n");
      expect(seen).toEqual([]);
    });

    it("the sandbox inherits no file descriptor but stdin, stdout and stderr", async () => {
      const r = await rig.run({ kind: "python", code: "import os\nprint(sorted(os.listdir('/proc/self/fd')))" });
      expect(r.stdout).toBe("['0', '1', '2', '3']\n"); // 3: listdir's own directory fd
    });

    it("the host's processes, /sys and the cgroup tree are out of reach", async () => {
      const script = [
        `kill -0 1 && echo pid1-of-sandbox`,
        `ls /proc/${process.pid} >/dev/null 2>&1 && echo sees-worker`,
        "ls /sys >/dev/null 2>&1 && echo has-sys",
        "echo 1 > /sys/fs/cgroup/memory/cgroup.procs 2>/dev/null && echo wrote-cgroup",
        "cat /proc/self/cgroup",
        "echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo wrote-proc-sys",
        "echo b > /proc/sysrq-trigger 2>/dev/null && echo wrote-sysrq",
        "head -c 1 /proc/kcore >/dev/null 2>&1 && echo read-kcore",
        "ls /etc/shadow /root /home 2>/dev/null && echo sees-host-files",
        "cat /etc/passwd | wc -l",
      ].join("\n");
      const r = await rig.run({ kind: "shell", script });
      expect(r.stdout).toContain("pid1-of-sandbox");
      for (const bad of ["sees-worker", "has-sys", "wrote-cgroup", "wrote-proc-sys", "wrote-sysrq", "read-kcore", "sees-host-files"]) {
        expect(r.stdout).not.toContain(bad);
      }
      expect(r.stdout).not.toContain("sandqueue/sq-"); // cgroup namespace: the host's cgroup path is hidden
    });
  });

  describe("privilege escalation", () => {
    it("runs confined: no capabilities, no_new_privs, seccomp filter on", async () => {
      const r = await rig.run({ kind: "shell", script: "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status" });
      expect(r.stdout).toMatch(/^CapEff:\s+0+$/m);
      expect(r.stdout).toMatch(/^CapPrm:\s+0+$/m);
      expect(r.stdout).toMatch(/^NoNewPrivs:\s+1$/m);
      expect(r.stdout).toMatch(/^Seccomp:\s+2$/m);
    });

    it("setuid binaries, mount, unshare, chroot and /proc/sys writes all fail", async () => {
      const script = [
        "su -c id root </dev/null >/dev/null 2>&1 && echo ESCALATED-su",
        "echo x | passwd --stdin root >/dev/null 2>&1 && echo ESCALATED-passwd",
        "mount -t tmpfs none /workspace >/dev/null 2>&1 && echo ESCALATED-mount",
        "mount --bind /workspace /tmp >/dev/null 2>&1 && echo ESCALATED-bind",
        "unshare -r id >/dev/null 2>&1 && echo ESCALATED-unshare-r",
        "unshare -m true >/dev/null 2>&1 && echo ESCALATED-unshare-m",
        "unshare -n true >/dev/null 2>&1 && echo ESCALATED-unshare-n",
        "chroot / true >/dev/null 2>&1 && echo ESCALATED-chroot",
        "strace -f true >/dev/null 2>&1 && echo ESCALATED-strace",
        "echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo ESCALATED-proc-sys",
        "echo done",
      ].join("\n");
      const r = await rig.run({ kind: "shell", script });
      expect(r.stdout).toBe("done\n");
    });

    it("dangerous syscalls are denied by seccomp (EPERM), clone3 is ENOSYS, ordinary code still works", async () => {
      const code = `
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
checks = {
    "ptrace": sc(101, 0, 0, 0, 0),            # PTRACE_TRACEME
    "unshare_user": sc(272, 0x10000000),
    "unshare_ns": sc(272, 0x00020000),
    "setns": sc(308, 0, 0),
    "mount": sc(165, 0, 0, 0, 0, 0),
    "keyctl": sc(250, 0, 0, 0, 0, 0),         # KEYCTL_GET_KEYRING_ID
    "add_key": sc(248, 0, 0, 0, 0, 0),
    "bpf": sc(321, 0, 0, 0),
    "perf_event_open": sc(298, 0, 0, 0, 0, 0),
    "userfaultfd": sc(323, 0),
    "io_uring_setup": sc(425, 1, 0),
    "open_by_handle_at": sc(304, 0, 0, 0),
    "process_vm_readv": sc(310, 1, 0, 0, 0, 0, 0),
    "clone_newuser": sc(56, 0x10000000 | 17, 0, 0, 0, 0),
}
for k, v in checks.items(): print(k, v)
print("clone3", sc(435, 0, 0))
# TIOCSTI on a terminal the job owns: denied by the filter, not by the tty layer
import fcntl, termios, pty
m, s = pty.openpty()
try:
    fcntl.ioctl(s, termios.TIOCSTI, b"x"); print("tiocsti", 0)
except OSError as e:
    print("tiocsti", e.errno)
# ordinary code: threads, processes, pipes, /dev/shm semaphores
import threading, subprocess, multiprocessing
t = threading.Thread(target=lambda: None); t.start(); t.join()
print("sub", subprocess.run(["sh", "-c", "echo hi | tr a-z A-Z"], capture_output=True, text=True).stdout.strip())
with multiprocessing.Pool(2) as p: print("pool", sum(p.map(abs, range(-5, 5))))
print("fork", os.waitpid(os.fork() or os._exit(0) or 0, 0)[1] if False else "ok")
`;
      const r = await rig.run({ kind: "python", code, limits: { timeoutMs: 20_000 } });
      expect(r.status, r.stderr).toBe("succeeded");
      const EPERM = 1;
      const lines = Object.fromEntries(r.stdout.trim().split("\n").map((l) => l.split(" ") as [string, string]));
      for (const k of ["ptrace", "unshare_user", "unshare_ns", "setns", "mount", "keyctl", "add_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "open_by_handle_at", "process_vm_readv", "clone_newuser", "tiocsti"]) {
        expect(Number(lines[k]), k).toBe(EPERM);
      }
      expect(Number(lines.clone3)).toBe(38); // ENOSYS: libc falls back to clone(), which is checked
      expect(lines.sub).toBe("HI");
      expect(lines.pool).toBe("25");
    });

    it("the terminal of the worker cannot be reached (no controlling tty, /dev/tty fails)", async () => {
      const r = await rig.run({ kind: "python", code: "import os\ntry:\n    os.open('/dev/tty', os.O_RDWR); print('tty')\nexcept OSError as e:\n    print('no-tty', e.errno)\nprint('sid', os.getsid(0) == os.getpid() or os.getsid(0))" });
      expect(r.stdout).toMatch(/^no-tty \d+$/m);
    });
  });

  describe("symlinks planted for the host", () => {
    it("a snapshot stores every symlink as a link, never its target's content; restored, links resolve inside the sandbox", async () => {
      const shadowHead = readFileSync("/etc/shadow", "utf8").split("\n")[0]!;
      const r = await rig.run({
        kind: "shell",
        script: "ln -s /etc/shadow shadow; ln -s / root; ln -s /proc/self/environ env; ln -s ../../../../../etc/passwd up; mkdir d; ln -s /etc d/etc; echo ok > plain; ln -s plain inlink",
        workspace: { persist: true },
      });
      expect(r.status, r.stderr).toBe("succeeded");
      const entries = await tarEntries(readSnapshot(r.snapshot!.id));
      const links = Object.fromEntries(entries.filter((e) => e.type === "symlink").map((e) => [e.name.replace(/^\.\//, ""), e.linkname]));
      expect(links).toEqual({ shadow: "/etc/shadow", root: "/", env: "/proc/self/environ", up: "../../../../../etc/passwd", "d/etc": "/etc", inlink: "plain" });
      const all = readSnapshot(r.snapshot!.id).toString("latin1");
      expect(all).not.toContain(shadowHead);
      expect(all).not.toContain(CANARY);
      // In the next sandbox they point into that sandbox's own root: its generated /etc (no shadow, its own passwd).
      const next = await rig.run({ kind: "shell", script: "cat inlink; cat shadow 2>/dev/null || echo no-shadow; cat up; cat env | tr '\\0' '\\n'", workspace: { from: r.snapshot!.id } });
      expect(next.stdout).toMatch(/^ok\nno-shadow\n/);
      expect(next.stdout).toContain("sandbox:x:1000:1000");
      expect(next.stdout).not.toContain(shadowHead);
      expect(next.stdout).not.toContain(CANARY);
    });

    it("fifos and sockets in the workspace are skipped by the snapshot (the host never blocks on them)", async () => {
      const r = await rig.run({
        kind: "python",
        code: "import os, socket\nos.mkfifo('fifo')\nsocket.socket(socket.AF_UNIX).bind('sock')\nopen('plain', 'w').write('ok')",
        workspace: { persist: true },
      });
      expect(r.status, r.stderr).toBe("succeeded");
      const names = (await tarEntries(readSnapshot(r.snapshot!.id))).map((e) => e.name.replace(/^\.\//, ""));
      expect(names).toEqual(["plain"]);
    });

    it("release unlinks planted links; the host directories they point at survive", async () => {
      const victim = tempDir("sec-victim");
      writeFileSync(path.join(victim, "keep.txt"), "precious");
      mkdirSync(path.join(victim, "sub"));
      writeFileSync(path.join(victim, "sub", "keep2.txt"), "precious");
      const r = await rig.run({
        kind: "shell",
        script: `ln -s ${victim} dir; ln -s ${victim}/keep.txt file; ln -s ${victim}/sub sub; mkdir -p a/b; ln -s ${victim} a/b/deep; ln -s / root; echo ok`,
      });
      expect(r.status).toBe("succeeded");
      expect(await rig.leftoverSandboxes()).toEqual([]); // released: the planted links are gone
      expect(readFileSync(path.join(victim, "keep.txt"), "utf8")).toBe("precious");
      expect(readFileSync(path.join(victim, "sub", "keep2.txt"), "utf8")).toBe("precious");
      expect(readdirSync(victim).sort()).toEqual(["keep.txt", "sub"]);
    });

    it("inline files are never written through a symlink restored from a snapshot", async () => {
      const id = storeSnapshot(await rawTar([{ name: "sub", type: "directory", mode: 0o755 }, { name: "input", type: "symlink", linkname: "sub" }]));
      const r = await rig.run({ kind: "shell", script: "echo SHOULD-NOT-RUN", workspace: { from: id }, files: { "input/pwned": "x" } });
      expect(r).toMatchObject({ status: "error", attempts: 1 });
      expect(r.error?.code).toBe(ErrorCodes.TAR_THROUGH_SYMLINK);
    });
  });

  describe("hostile archives in workspace.from", () => {
    const outside = `/tmp/sandq-sec-outside-${nonce()}`;
    const cases: Array<{ name: string; code: string; entries: RawEntry[] }> = [
      { name: "parent path", code: ErrorCodes.TAR_PARENT_PATH, entries: [{ name: `../../../../../../..${outside}-dotdot`, body: "x" }] },
      { name: "parent path inside a dir", code: ErrorCodes.TAR_PARENT_PATH, entries: [{ name: "a/../../x", body: "x" }] },
      { name: "absolute path", code: ErrorCodes.TAR_ABSOLUTE_PATH, entries: [{ name: `${outside}-abs`, body: "x" }] },
      {
        name: "absolute symlink, then a write through it",
        code: ErrorCodes.TAR_THROUGH_SYMLINK,
        entries: [
          { name: "link", type: "symlink", linkname: "/tmp" },
          { name: `link/${path.basename(outside)}-through`, body: "x" },
        ],
      },
      {
        name: "in-workspace symlink, then a write through it",
        code: ErrorCodes.TAR_THROUGH_SYMLINK,
        entries: [
          { name: "sub", type: "directory", mode: 0o755 },
          { name: "link", type: "symlink", linkname: "sub" },
          { name: "link/x", body: "x" },
        ],
      },
      { name: "symlink pointing outside, relative, then a write through it", code: ErrorCodes.TAR_THROUGH_SYMLINK, entries: [{ name: "l", type: "symlink", linkname: "../../../../etc" }, { name: "l/x", body: "x" }] },
      { name: "hardlink to a host file", code: ErrorCodes.TAR_HARDLINK, entries: [{ name: "h", type: "link", linkname: "/etc/shadow" }] },
      { name: "character device", code: ErrorCodes.TAR_SPECIAL_FILE, entries: [{ name: "mem", type: "character-device", devmajor: 1, devminor: 1 }] },
      { name: "block device", code: ErrorCodes.TAR_SPECIAL_FILE, entries: [{ name: "disk", type: "block-device", devmajor: 8, devminor: 0 }] },
      { name: "fifo", code: ErrorCodes.TAR_SPECIAL_FILE, entries: [{ name: "fifo", type: "fifo" }] },
      { name: "setuid file", code: ErrorCodes.TAR_SETID, entries: [{ name: "suid", mode: 0o4755, body: "#!/bin/sh\nid\n" }] },
    ];
    for (const c of cases) {
      it(`${c.name}: error ${c.code}, nothing written`, async () => {
        const id = storeSnapshot(await rawTar([{ name: "before.txt", body: "ok" }, ...c.entries]));
        const r = await rig.run({ kind: "shell", script: "echo SHOULD-NOT-RUN", workspace: { from: id } });
        expect(r).toMatchObject({ status: "error", attempts: 1 });
        expect(r.error?.code).toBe(c.code);
        expect(r.stdout).not.toContain("SHOULD-NOT-RUN");
        for (const suffix of ["-dotdot", "-abs", "-through"]) expect(existsSync(`${outside}${suffix}`)).toBe(false);
      });
    }
  });

  describe("hostile inline file paths", () => {
    for (const p of ["../escape", "/etc/passwd", "a/../../x", "a/../../../tmp/x", "", ".", "..", "a\0b", "./../x", "a//../../x"]) {
      it(`rejects ${JSON.stringify(p)} at enqueue`, async () => {
        await expect(rig.client.enqueue({ kind: "shell", script: "true", files: { [p]: "x" } })).rejects.toMatchObject({
          code: ErrorCodes.SPEC_INVALID,
        });
      });
    }
  });
});
