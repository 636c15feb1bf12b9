import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import { CappedCapture } from "../../providers/local/output-capture.js";

describe("CappedCapture", () => {
  it("keeps everything up to the cap, byte-exact", async () => {
    const s = new PassThrough();
    let overflows = 0;
    const c = new CappedCapture(s, 6, () => overflows++);
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
    const c = new CappedCapture(s, 5, () => overflows++);
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
    const c = new CappedCapture(s, 0, () => overflows++);
    s.end("x");
    await c.done;
    expect(c.bytes.length).toBe(0);
    expect(c.truncated).toBe(true);
    expect(overflows).toBe(1);
  });
});
