import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import { ExecSupervision, OutputCapture } from "../../providers/exec-supervision.js";
import type { ExecRequest } from "../../providers/provider.js";

describe("OutputCapture (shared by every provider)", () => {
  it("keeps everything up to the cap, byte-exact", async () => {
    const s = new PassThrough();
    let overflows = 0;
    const c = new OutputCapture(6, () => overflows++, s);
    s.write(Buffer.from([0xff, 0x00, 0x80]));
    s.end(Buffer.from("abc"));
    await c.done;
    expect(c.bytes.equals(Buffer.from([0xff, 0x00, 0x80, 0x61, 0x62, 0x63]))).toBe(true);
    expect(c.truncated).toBe(false);
    expect(overflows).toBe(0);
  });

  it("stops at the cap, reports once, keeps draining", async () => {
    const s = new PassThrough();
    let overflows = 0;
    const c = new OutputCapture(5, () => overflows++, s);
    s.write("abc");
    s.write("defgh");
    s.write("more and more");
    s.end("end");
    await c.done;
    expect(c.bytes.toString()).toBe("abcde");
    expect(c.truncated).toBe(true);
    expect(overflows).toBe(1);
    expect(s.readableEnded).toBe(true);
  });

  it("a zero cap truncates on the first byte", async () => {
    const s = new PassThrough();
    let overflows = 0;
    const c = new OutputCapture(0, () => overflows++, s);
    s.end("x");
    await c.done;
    expect(c.bytes.length).toBe(0);
    expect(c.truncated).toBe(true);
    expect(overflows).toBe(1);
  });
});

describe("ExecSupervision (one supervision for every provider)", () => {
  const req = (over: Partial<ExecRequest> = {}): ExecRequest => ({ argv: ["x"], env: {}, timeoutMs: 10_000, maxOutputBytes: 4, ...over });

  it("kills once, for the first hit, and reports by one precedence whatever the order of hits", () => {
    const kills: string[] = [];
    const sup = new ExecSupervision(req(), { kill: (why) => kills.push(why) });
    sup.stdout.push(Buffer.from("12345")); // over the cap of 4
    sup.hit("timeout");
    sup.note("memory");
    expect(kills).toEqual(["output"]);
    const r = sup.result({ exitCode: 0, signal: null });
    expect(r.limitHit).toBe("timeout"); // timeout outranks output and memory
    expect(r).toMatchObject({ exitCode: null, signal: "SIGKILL", stdoutTruncated: true });
    expect(r.stdout.toString()).toBe("1234");
  });

  it("fires the timeout and the abort signals; a run it never killed keeps its own status", async () => {
    const kills: string[] = [];
    const sup = new ExecSupervision(req({ timeoutMs: 20 }), { kill: (why) => kills.push(why) });
    await new Promise((r) => setTimeout(r, 60));
    expect(kills).toEqual(["timeout"]);
    sup.stop();

    const ac = new AbortController();
    const released = new AbortController();
    const aborted = new ExecSupervision(req({ signal: ac.signal }), { kill: (why) => kills.push(why), abortSignals: [released.signal] });
    released.abort();
    expect(aborted.result({ exitCode: null, signal: null }).limitHit).toBe("aborted");

    const plain = new ExecSupervision(req(), { kill: () => kills.push("never") });
    expect(plain.result({ exitCode: 3, signal: null })).toMatchObject({ exitCode: 3, signal: null, limitHit: null });
    expect(kills).not.toContain("never");
  });

  it("a limit seen afterwards turns 128+n into death by signal n, except for pids (a failed fork exits normally)", () => {
    const mem = new ExecSupervision(req(), { kill: () => {} });
    mem.note("memory");
    expect(mem.result({ exitCode: 137, signal: null })).toMatchObject({ exitCode: null, signal: "SIGKILL", limitHit: "memory" });
    const pids = new ExecSupervision(req(), { kill: () => {} });
    pids.note("pids");
    expect(pids.result({ exitCode: 130, signal: null })).toMatchObject({ exitCode: 130, signal: null, limitHit: "pids" });
  });
});
