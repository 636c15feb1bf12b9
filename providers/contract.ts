/**
 * The provider contract suite: every SandboxProvider must pass it.
 *
 *   describeProviderContract("local", async () => new LocalProvider(...), { image: "host", ... })
 *
 * Provider-neutral: it needs only `/bin/sh`, coreutils-style `env`/`cat` and
 * `python3` in the image under test, and asks the provider-specific part
 * (what host resources exist) through `opts.listResources`.
 */
import { Readable } from "node:stream";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { ExecRequest, ExecResult, ProviderCapabilities, Sandbox, SandboxProvider, SandboxSpec } from "./provider.js";
import { isSandqueueError } from "../errors/index.js";

export interface ProviderContractOptions {
  /** Image with /bin/sh and python3. Default "host". */
  image?: string;
  /** An image name that does not exist. Default "sandqueue-contract-no-such-image". */
  missingImage?: string;
  /**
   * Backend objects the provider currently holds (workspace dirs, cgroups,
   * containers...). Used to check that release and failed acquires leave
   * nothing behind. Only this provider instance's objects, please.
   */
  listResources: () => Promise<string[]>;
  /** Default limits for the sandboxes of the suite. */
  memoryMb?: number;
  pids?: number;
  /** Extra slack for slow backends (container start), ms. Default 0. */
  slackMs?: number;
}

const PATH_ENV = { PATH: "/usr/local/bin:/usr/bin:/bin" };

async function tarOf(files: Record<string, string | Buffer>): Promise<Buffer> {
  const { pack } = await import("tar-stream");
  const p = pack();
  for (const [name, content] of Object.entries(files)) p.entry({ name, mode: 0o644 }, content);
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p as unknown as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

async function untar(stream: Readable): Promise<Map<string, Buffer>> {
  const { extract } = await import("tar-stream");
  const ex = extract();
  const out = new Map<string, Buffer>();
  stream.pipe(ex as unknown as NodeJS.WritableStream);
  for await (const entry of ex as unknown as AsyncIterable<Readable & { header: { name: string; type: string } }>) {
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(c as Buffer);
    if (entry.header.type === "file") out.set(entry.header.name.replace(/^\.\//, ""), Buffer.concat(chunks));
  }
  return out;
}

export function describeProviderContract(
  name: string,
  makeProvider: () => Promise<SandboxProvider>,
  opts: ProviderContractOptions,
): void {
  const image = opts.image ?? "host";
  const slack = opts.slackMs ?? 0;
  const spec = (over: Partial<SandboxSpec["limits"]> = {}): SandboxSpec => ({
    image,
    limits: { memoryMb: opts.memoryMb ?? 256, pids: opts.pids ?? 64, ...over },
    network: "none",
    labels: { "sandqueue.test": "contract" },
    annotations: {},
    maxLifetimeMs: 600_000,
  });

  describe(`provider contract: ${name}`, () => {
    let provider: SandboxProvider;
    const toRelease: Sandbox[] = [];

    beforeAll(async () => {
      provider = await makeProvider();
    });
    afterEach(async () => {
      await Promise.allSettled(toRelease.splice(0).map((s) => s.release()));
    });
    afterAll(async () => {
      await provider?.close();
    });

    /**
     * A case that needs capabilities: run when the provider declares them;
     * otherwise recorded as not run, with the reason, and printed after the
     * suite. The branch is explicit: nothing is skipped silently.
     */
    const notRun: string[] = [];
    const needs = (caps: (keyof ProviderCapabilities)[], title: string, fn: () => Promise<void>, timeout?: number): void => {
      it(title, async () => {
        const missing = caps.filter((c) => !provider.capabilities[c]);
        if (missing.length) {
          notRun.push(`${title}: the provider does not declare ${missing.join(", ")}`);
          return;
        }
        await fn();
      }, timeout);
    };
    afterAll(() => {
      if (notRun.length) process.stdout.write(`provider contract ${name}: not run, by capability:\n  ${notRun.join("\n  ")}\n`);
    });

    async function sandbox(over: Partial<SandboxSpec["limits"]> = {}): Promise<Sandbox> {
      const s = await provider.acquire(spec(over), {});
      toRelease.push(s);
      return s;
    }

    function run(s: Sandbox, req: Partial<ExecRequest> & { argv: string[] }): Promise<ExecResult> {
      return s.exec({ env: PATH_ENV, timeoutMs: 20_000 + slack, maxOutputBytes: 1024 * 1024, ...req });
    }
    const sh = (s: Sandbox, script: string, req: Partial<ExecRequest> = {}) => run(s, { argv: ["/bin/sh", "-c", script], ...req });
    const py = (s: Sandbox, code: string, req: Partial<ExecRequest> = {}) => run(s, { argv: ["python3", "-c", code], ...req });

    describe("exec", () => {
      it("runs argv directly (no shell) and a shell script", async () => {
        const s = await sandbox();
        const direct = await run(s, { argv: ["/bin/sh", "-c", 'printf "%s|" "$@"', "sh", "a b", "$HOME", "*"] });
        expect(direct.stdout.toString()).toBe("a b|$HOME|*|");
        const r = await sh(s, "echo one; echo two");
        expect(r).toMatchObject({ exitCode: 0, signal: null, limitHit: null, stdoutTruncated: false, stderrTruncated: false });
        expect(r.stdout.toString()).toBe("one\ntwo\n");
        expect(r.durationMs).toBeGreaterThanOrEqual(0);
      });

      it("runs a shell script as `sh -c` does: $0, PWD, quoting, syntax errors, set -e, traps, exec", async () => {
        const s = await sandbox();
        const r = await sh(s, `echo "$0|$PWD|$(printenv PWD)"; echo 'it''s "quoted"'\ntrap 'echo bye' EXIT; echo "$(pwd)"`, { cwd: "/tmp" });
        expect(r).toMatchObject({ exitCode: 0, stderr: Buffer.alloc(0) });
        expect(r.stdout.toString()).toBe(`/bin/sh|/tmp|/tmp\nits "quoted"\n/tmp\nbye\n`);
        // Commands before a syntax error run; the shell then exits 2, as dash -c does.
        const bad = await sh(s, "echo before\nif then fi");
        expect(bad.exitCode).toBe(2);
        expect(bad.stdout.toString()).toBe("before\n");
        expect(bad.stderr.toString()).toMatch(/Syntax error/);
        const errexit = await sh(s, "set -e; echo a; false; echo b");
        expect([errexit.exitCode, errexit.stdout.toString()]).toEqual([1, "a\n"]);
        const replaced = await sh(s, "exec echo replaced; echo not reached");
        expect([replaced.exitCode, replaced.stdout.toString()]).toEqual([0, "replaced\n"]);
        const missing = await sh(s, "no-such-command-here");
        expect(missing.exitCode).toBe(127);
        expect(missing.stderr.toString()).toMatch(/no-such-command-here: not found/);
      });

      it("runs python3 with /workspace as the working directory", async () => {
        const s = await sandbox();
        const r = await py(s, "import os, sys; print(os.getcwd()); print(sys.version_info[0])");
        expect(r.exitCode).toBe(0);
        expect(r.stdout.toString()).toBe("/workspace\n3\n");
      });

      it("honours cwd", async () => {
        const s = await sandbox();
        const r = await run(s, { argv: ["/bin/sh", "-c", "pwd"], cwd: "/tmp" });
        expect(r.stdout.toString()).toBe("/tmp\n");
      });

      it("reports exit codes", async () => {
        const s = await sandbox();
        for (const code of [0, 1, 3, 42, 255]) {
          const r = await sh(s, `exit ${code}`);
          expect(r.exitCode).toBe(code);
          expect(r.limitHit).toBeNull();
        }
      });

      needs(["separateStderr", "byteExactOutput"], "keeps stdout and stderr apart, byte for byte (non-UTF-8 included)", async () => {
        const s = await sandbox();
        const r = await sh(s, "printf 'out\\377\\376\\000\\001end'; printf 'err\\200\\300' >&2; printf 'more' ");
        expect(r.exitCode).toBe(0);
        expect(r.stdout.equals(Buffer.from([...Buffer.from("out"), 0xff, 0xfe, 0x00, 0x01, ...Buffer.from("endmore")]))).toBe(true);
        expect(r.stderr.equals(Buffer.from([...Buffer.from("err"), 0x80, 0xc0]))).toBe(true);
      });

      needs(["stdin", "byteExactOutput"], "feeds stdin (string and binary Buffer, larger than a pipe buffer) and closes it", async () => {
        const s = await sandbox();
        const text = await run(s, { argv: ["cat"], stdin: "hello\nworld" });
        expect(text.stdout.toString()).toBe("hello\nworld");
        const big = Buffer.alloc(300_000);
        for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
        const bin = await run(s, { argv: ["cat"], stdin: big });
        expect(bin.exitCode).toBe(0);
        expect(bin.stdout.equals(big)).toBe(true);
        // No stdin given: reading it ends at once (EOF), not hang.
        const none = await sh(s, "cat; echo done", { timeoutMs: 5_000 + slack });
        expect(none.stdout.toString()).toBe("done\n");
        expect(none.limitHit).toBeNull();
      });

      needs(["stdin"], "a program that exits without reading its stdin still gets a result", async () => {
        const s = await sandbox();
        const r = await sh(s, "exit 0", { stdin: Buffer.alloc(1024 * 1024, 1) });
        expect(r.exitCode).toBe(0);
      });

      it("sandbox state persists between execs in the workspace, /tmp is private", async () => {
        const s = await sandbox();
        await sh(s, "echo kept > /workspace/f");
        const r = await sh(s, "cat /workspace/f");
        expect(r.stdout.toString()).toBe("kept\n");
        const other = await sandbox();
        const o = await sh(other, "ls -A /workspace");
        expect(o.stdout.toString()).toBe("");
      });
    });

    describe("limits", () => {
      it("timeout kills a sleeping job", async () => {
        const s = await sandbox();
        const r = await sh(s, "echo started; sleep 30; echo never", { timeoutMs: 700 });
        expect(r.limitHit).toBe("timeout");
        expect(r.exitCode).not.toBe(0);
        expect(r.stdout.toString()).toBe("started\n");
        expect(r.durationMs).toBeLessThan(10_000 + slack);
      });

      it("timeout kills a spinning job and its children", async () => {
        const s = await sandbox();
        const t0 = Date.now();
        const r = await sh(s, "python3 -c 'while True: pass' & while :; do :; done", { timeoutMs: 1_000 });
        expect(r.limitHit).toBe("timeout");
        expect(Date.now() - t0).toBeLessThan(10_000 + slack);
        // Nothing of it survives: a new exec sees only itself.
        const ps = await py(s, "import os; print(len([p for p in os.listdir('/proc') if p.isdigit()]))");
        expect(Number(ps.stdout.toString())).toBeLessThanOrEqual(3);
      });

      needs(["memoryLimit", "limitEvents"], "memory limit: an allocation above memoryMb is killed and reported", async () => {
        const s = await sandbox({ memoryMb: 64 });
        const r = await py(s, "b = bytearray(b'x') * (256 * 1024 * 1024); print('survived')", { timeoutMs: 30_000 + slack });
        expect(r.limitHit).toBe("memory");
        expect(r.exitCode).not.toBe(0);
        expect(r.stdout.toString()).not.toContain("survived");
        // The limit does not stop normal work in the same sandbox afterwards.
        const ok = await py(s, "b = bytearray(8 * 1024 * 1024); print(len(b))");
        expect(ok.stdout.toString()).toBe(`${8 * 1024 * 1024}\n`);
        expect(ok.limitHit).toBeNull();
      });

      needs(["pidsLimit", "limitEvents"], "pids limit: forking beyond it fails and is reported", async () => {
        const s = await sandbox({ pids: 8 });
        const code = [
          "import os, time",
          "n = 0",
          "for i in range(50):",
          "    try:",
          "        pid = os.fork()",
          "    except OSError:",
          "        break",
          "    if pid == 0:",
          "        time.sleep(3); os._exit(0)",
          "    n += 1",
          "print(n)",
        ].join("\n");
        const r = await py(s, code);
        expect(r.limitHit).toBe("pids");
        const forked = Number(r.stdout.toString());
        expect(forked).toBeGreaterThan(0);
        expect(forked).toBeLessThan(8);
      });

      it("output limit: stops collecting, kills the job, marks the stream truncated", async () => {
        const s = await sandbox();
        const r = await sh(s, "echo to-stderr >&2; yes sandqueue", { maxOutputBytes: 1000, timeoutMs: 15_000 + slack });
        expect(r.limitHit).toBe("output");
        expect(r.stdout.length).toBe(1000);
        expect(r.stdout.toString().startsWith("sandqueue\nsandqueue\n")).toBe(true);
        expect(r.stdoutTruncated).toBe(true);
        expect(r.stderrTruncated).toBe(false);
        expect(r.stderr.toString()).toBe("to-stderr\n");
      });

      it("output exactly at the cap is not truncated", async () => {
        const s = await sandbox();
        const r = await sh(s, "printf 0123456789", { maxOutputBytes: 10 });
        expect(r).toMatchObject({ limitHit: null, stdoutTruncated: false, exitCode: 0 });
        expect(r.stdout.toString()).toBe("0123456789");
      });

      it("stderr is capped on its own", async () => {
        const s = await sandbox();
        const r = await sh(s, "yes err >&2", { maxOutputBytes: 100, timeoutMs: 15_000 + slack });
        expect(r).toMatchObject({ limitHit: "output", stderrTruncated: true, stdoutTruncated: false });
        expect(r.stderr.length).toBe(100);
      });

      it("abort signal kills the job and reports aborted", async () => {
        const s = await sandbox();
        const ac = new AbortController();
        setTimeout(() => ac.abort(), 300);
        const r = await sh(s, "sleep 30", { signal: ac.signal, timeoutMs: 20_000 });
        expect(r.limitHit).toBe("aborted");
        const pre = await sh(s, "echo should-not-run", { signal: AbortSignal.abort() });
        expect(pre.limitHit).toBe("aborted");
        expect(pre.stdout.toString()).toBe("");
      });
    });

    describe("isolation", () => {
      needs(["networkIsolation"], "has no network: only lo, and the host's 127.0.0.1:6379 is unreachable", async () => {
        const s = await sandbox();
        const r = await py(
          s,
          [
            "import socket",
            "print(sorted(n for _, n in socket.if_nameindex()))",
            "s = socket.socket(); s.settimeout(3)",
            "try:",
            "    s.connect(('127.0.0.1', 6379)); print('connected')",
            "except OSError as e:",
            "    print('refused')",
            "try:",
            "    socket.create_connection(('1.1.1.1', 53), timeout=3); print('internet')",
            "except OSError as e:",
            "    print('no-route')",
          ].join("\n"),
        );
        expect(r.stdout.toString()).toBe("['lo']\nrefused\nno-route\n");
      });

      it("sees only the request's environment, never the worker's", async () => {
        process.env.SANDQUEUE_CONTRACT_WORKER_SECRET = "worker-only-value";
        try {
          const s = await sandbox();
          const r = await run(s, { argv: ["env"], env: { ...PATH_ENV, JOB_VAR: "job value=with equals" } });
          const lines = r.stdout.toString().trim().split("\n").sort();
          // A runtime may add its own bookkeeping variables (bwrap sets PWD, Docker HOSTNAME/HOME), nothing else.
          const extra = lines.filter((l) => !/^(PWD|HOME|HOSTNAME)=/.test(l));
          expect(extra).toEqual(["JOB_VAR=job value=with equals", `PATH=${PATH_ENV.PATH}`]);
          expect(r.stdout.toString()).not.toContain("worker-only-value");
        } finally {
          delete process.env.SANDQUEUE_CONTRACT_WORKER_SECRET;
        }
      });

      it("cannot see host processes", async () => {
        const s = await sandbox();
        const r = await py(
          s,
          "import os\nfor p in os.listdir('/proc'):\n  if p.isdigit():\n    try: print(repr(open(f'/proc/{p}/cmdline','rb').read()[:200]))\n    except OSError: pass",
        );
        const procs = r.stdout.toString().trim().split("\n");
        // This python and at most a runtime init / shell of its own.
        expect(procs.length).toBeLessThanOrEqual(3);
        expect(r.stdout.toString()).not.toMatch(/vitest|node |redis-server/);
      });

      it("runs without root privileges", async () => {
        const s = await sandbox();
        const r = await sh(s, "id -u; grep CapEff /proc/self/status");
        const [uid, cap] = r.stdout.toString().trim().split("\n");
        expect(uid).not.toBe("0");
        expect(cap).toMatch(/CapEff:\s+0+$/);
      });

      it("can write /workspace and /tmp only", async () => {
        const s = await sandbox();
        const r = await sh(
          s,
          // (/dev/shm, a private tmpfs like /tmp, may be writable too; it is not listed.)
          'for f in /workspace/ok /tmp/ok /x /etc/x /usr/x /bin/x /home/x /root/x /var/x /proc/x /dev/x /sys/x; do if (echo hi > "$f") 2>/dev/null; then echo "W $f"; else echo "R $f"; fi; done',
        );
        const writable = r.stdout.toString().split("\n").filter((l) => l.startsWith("W ")).map((l) => l.slice(2));
        expect(writable.sort()).toEqual(["/tmp/ok", "/workspace/ok"]);
      });

      it("does not expose secrets of the host's /etc", async () => {
        const s = await sandbox();
        const r = await sh(s, "cat /etc/shadow 2>/dev/null && echo READABLE; ls /root 2>/dev/null && echo ROOT; echo end");
        expect(r.stdout.toString()).toBe("end\n");
      });
    });

    describe("archives", () => {
      it("puts a tar into the workspace and gets it back out", async () => {
                const s = await sandbox();
        const tar = await tarOf({ "in/hello.txt": "hello from tar\n", "in/bin.dat": Buffer.from([0, 255, 128, 10]) });
        await s.putArchive("/workspace", Readable.from(tar));
        const r = await sh(s, "cat in/hello.txt && echo produced > in/out.txt");
        expect(r.stdout.toString()).toBe("hello from tar\n");
        const files = await untar(await s.getArchive("/workspace/in"));
        expect(files.get("hello.txt")?.toString()).toBe("hello from tar\n");
        expect(files.get("out.txt")?.toString()).toBe("produced\n");
        expect(files.get("bin.dat")?.equals(Buffer.from([0, 255, 128, 10]))).toBe(true);
      });

      it("refuses archive paths outside the workspace", async () => {
                const s = await sandbox();
        const tar = await tarOf({ "a.txt": "x" });
        for (const dir of ["/etc", "/workspace/../etc", "relative"]) {
          await expect(s.putArchive(dir, Readable.from(tar))).rejects.toSatisfy(isSandqueueError);
        }
      });

      it("refuses to follow a symlink planted in the workspace", async () => {
                const s = await sandbox();
        await sh(s, "ln -s /etc /workspace/evil");
        const tar = await tarOf({ "a.txt": "x" });
        await expect(s.putArchive("/workspace/evil", Readable.from(tar))).rejects.toSatisfy(isSandqueueError);
        await expect(s.getArchive("/workspace/evil")).rejects.toSatisfy(isSandqueueError);
      });

      // Cancel and shutdown reach a transfer through its signal. A put may
      // leave part of its archive behind (an engine extracts as it reads):
      // an aborted job's sandbox is released, never used again.
      it("an abort stops putArchive promptly and destroys its tar", async () => {
        const s = await sandbox();
        await sh(s, "echo kept > kept.txt");
        const tar = await tarOf({ "big.bin": Buffer.alloc(4 << 20, 7), "late.txt": "late\n" });
        // Stalls after its first MiB: only the abort can end this transfer.
        const src = new Readable({ read() {} });
        src.push(tar.subarray(0, 1 << 20));
        const controller = new AbortController();
        const put = s.putArchive("/workspace", src, { signal: controller.signal });
        put.catch(() => {});
        await new Promise((r) => setTimeout(r, 300));
        const abortedAt = Date.now();
        controller.abort("cancelled");
        await expect(put).rejects.toSatisfy(isSandqueueError);
        expect(Date.now() - abortedAt).toBeLessThan(2000 + slack);
        expect(src.destroyed).toBe(true);
        const r = await sh(s, "cat kept.txt; test -e late.txt && echo LATE; true");
        expect(r.stdout.toString()).toBe("kept\n");

        // Aborted before it starts: nothing of the archive is read or extracted.
        const again = Readable.from(await tarOf({ "early.txt": "early\n" }));
        await expect(s.putArchive("/workspace", again, { signal: AbortSignal.abort("shutdown") })).rejects.toSatisfy(isSandqueueError);
        expect(again.destroyed).toBe(true);
        expect((await sh(s, "test -e early.txt && echo EARLY; true")).stdout.toString()).toBe("");
      });

      it("an abort fails a getArchive stream promptly: it never ends as if complete", async () => {
        const s = await sandbox();
        // Larger than any stream buffer: the tar cannot be complete after one chunk.
        await py(s, "open('big.bin', 'wb').write(b'x' * (32 << 20))");
        const controller = new AbortController();
        const tar = await s.getArchive("/workspace", { signal: controller.signal });
        const chunks = tar[Symbol.asyncIterator]();
        expect((await chunks.next()).done).toBe(false);
        const abortedAt = Date.now();
        controller.abort("cancelled");
        const rest = (async () => {
          while (!(await chunks.next()).done);
          return "ended";
        })();
        await expect(rest).rejects.toSatisfy(isSandqueueError);
        expect(Date.now() - abortedAt).toBeLessThan(2000 + slack);
        expect(tar.destroyed).toBe(true);

        await expect(s.getArchive("/workspace", { signal: AbortSignal.abort("shutdown") })).rejects.toSatisfy(isSandqueueError);
      });
    });

    describe("lifetime", () => {
      it("release is idempotent, leaves nothing behind, and exec afterwards fails", async () => {
        const before = await opts.listResources();
        const s = await provider.acquire(spec(), {});
        expect((await opts.listResources()).length).toBeGreaterThan(before.length);
        await sh(s, "echo data > /workspace/f; mkdir -p d/e; ln -s / root-link");
        await s.release();
        await s.release();
        await Promise.all([s.release(), s.release()]);
        expect(await opts.listResources()).toEqual(before);
        await expect(sh(s, "true")).rejects.toMatchObject({ code: "SANDQ_ERR_SANDBOX_RELEASED" });
      });

      it("release kills a running job", async () => {
        const before = await opts.listResources();
        const s = await provider.acquire(spec(), {});
        const pending = sh(s, "sleep 30", { timeoutMs: 30_000 });
        await new Promise((r) => setTimeout(r, 300));
        const t0 = Date.now();
        await s.release();
        const r = await pending;
        expect(r.limitHit).toBe("aborted");
        expect(Date.now() - t0).toBeLessThan(5_000 + slack);
        expect(await opts.listResources()).toEqual(before);
      });

      it("an unknown image is IMAGE_NOT_FOUND (not retryable) and leaves nothing behind", async () => {
        const before = await opts.listResources();
        const missing = opts.missingImage ?? "sandqueue-contract-no-such-image";
        const err = await provider.acquire({ ...spec(), image: missing }, {}).then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).toMatchObject({ code: "SANDQ_ERR_IMAGE_NOT_FOUND", retryable: false });
        expect((err as Error).message).toContain(missing);
        expect(await opts.listResources()).toEqual(before);
      });

      it("an aborted acquire creates nothing", async () => {
        const before = await opts.listResources();
        await expect(provider.acquire(spec(), { signal: AbortSignal.abort() })).rejects.toSatisfy(isSandqueueError);
        expect(await opts.listResources()).toEqual(before);
      });

      it("check() passes on a working provider", async () => {
        await expect(provider.check()).resolves.toBeUndefined();
      });
    });
  });
}
