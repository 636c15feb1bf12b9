/**
 * The egress bridge alone (providers/local/egress-bridge.py, `--pid` form):
 * a network namespace of its own made with util-linux's unshare, a unix
 * socket server on the host standing for the proxy, clients inside the
 * namespace through nsenter. What the sandboxes rely on: bytes exact both
 * ways, half-close honoured, no listening in the host's namespace, and the
 * bridge gone when the namespace's process is.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { helperPath } from "../../providers/local/spawner.js";
import { requireCommand, tempDir } from "../support/harness.js";

const run = promisify(execFile);
const PYTHON = existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
/** Brings lo up with an ioctl (no iproute2 needed), then waits. */
const NETNS_HOLDER = `
import fcntl, socket, struct, time
s = socket.socket()
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
print("up", flush=True)
time.sleep(600)
`;
const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

function exited(p: ChildProcess): Promise<void> {
  return p.exitCode !== null || p.signalCode !== null ? Promise.resolve() : new Promise((r) => p.once("exit", () => r()));
}

describe("egress bridge", () => {
  const dir = tempDir("egress-bridge");
  const socketPath = join(dir, "proxy.sock");
  let holder: ChildProcess;
  let server: net.Server;
  /** What the "proxy" received per connection. */
  const received: Buffer[] = [];

  beforeAll(async () => {
    requireCommand("unshare", "util-linux");
    requireCommand("nsenter", "util-linux");
    holder = spawn("unshare", ["--net", PYTHON, "-c", NETNS_HOLDER], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve) => holder.stdout!.once("data", () => resolve()));
    // Reads everything until the client's end, then answers with its length and hash and 3 MB more.
    server = net.createServer((c) => {
      const chunks: Buffer[] = [];
      c.on("data", (d: Buffer) => chunks.push(d));
      c.on("end", () => {
        const all = Buffer.concat(chunks);
        received.push(all);
        c.end(Buffer.concat([Buffer.from(`${all.length} ${sha(all)}\n`), Buffer.alloc(3_000_000, 120)]));
      });
    });
    await new Promise<void>((r) => server.listen(socketPath, r));
  });

  afterAll(async () => {
    holder?.kill("SIGKILL");
    await new Promise<void>((r) => server?.close(() => r()));
  });

  function startBridge(pid: number): { proc: ChildProcess; output: Promise<string> } {
    const proc = spawn(PYTHON, ["-I", helperPath("egress-bridge.py"), "--pid", String(pid), "3128", socketPath], { stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    proc.stdout!.on("data", (d: Buffer) => (text += d.toString()));
    proc.stderr!.on("data", (d: Buffer) => (text += d.toString()));
    const output = new Promise<string>((resolve) => {
      proc.stdout!.on("data", () => text.includes("ready\n") && resolve(text));
      proc.once("exit", () => resolve(text));
    });
    return { proc, output };
  }

  /** A client inside the namespace: sends `size` random bytes, shuts its write side, reads to the end. */
  async function roundTrip(size: number): Promise<string> {
    const { stdout } = await run(
      "nsenter",
      [`--net=/proc/${holder.pid}/ns/net`, PYTHON, "-c", `
import hashlib, os, socket
data = os.urandom(${size})
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(data)
s.shutdown(socket.SHUT_WR)
out = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    out += d
head, _, rest = out.partition(b"\\n")
print(head.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}", len(rest), rest == b"x" * len(rest))
`],
      { maxBuffer: 1024 * 1024 },
    );
    return stdout.trim();
  }

  it("carries bytes exactly both ways and honours half-close; exits with the namespace's process", async () => {
    const { proc, output } = startBridge(holder.pid!);
    expect(await output).toBe("ready\n");
    expect(await roundTrip(0)).toBe("True 3000000 True");
    expect(await roundTrip(8_000_000)).toBe("True 3000000 True");
    expect(received.map((b) => b.length)).toEqual([0, 8_000_000]);
    holder.kill("SIGKILL");
    await exited(proc);
    expect(proc.exitCode).toBe(0);
  });

  it("refuses to listen in the host's namespace", async () => {
    const sleeper = spawn("sleep", ["30"]);
    try {
      const { proc, output } = startBridge(sleeper.pid!);
      expect(await output).toContain(`process ${sleeper.pid} shares this host's network namespace: refusing to listen there`);
      await exited(proc);
      expect(proc.exitCode).toBe(1);
    } finally {
      sleeper.kill("SIGKILL");
    }
  });
});
