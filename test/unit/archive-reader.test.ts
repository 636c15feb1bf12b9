/**
 * The tar reader (providers/archive/tar-reader.ts) on formats real tools
 * write and on hand-made headers: ustar prefixes, pax 'x' and 'g' headers,
 * GNU long names, base-256 numbers, checksums, end markers, truncation,
 * and every chunking of the input.
 */
import { execFileSync } from "node:child_process";
import { mkdir, readFile, readlink, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { ErrorCodes, SnapshotError } from "../../errors/index.js";
import { extractTar, normalizeTar, validateTar } from "../../providers/archive/index.js";
import { DATA, HEADER, NEED, TarReader } from "../../providers/archive/tar-reader.js";
import { collect, LIMITS, listTree, rawTar, streamOf, tempDir } from "./archive-helpers.js";

let tmp: { path: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  tmp = await tempDir("sq-reader-");
});
afterEach(async () => tmp.cleanup());

/** A header block with a valid checksum; `size` may be raw field bytes (base-256). */
function block(f: { name: string; type?: string; size?: number | Buffer; mode?: number; linkname?: string; prefix?: string; magic?: "ustar" | "gnu" | "v7"; mtime?: number }): Buffer {
  const b = Buffer.alloc(512);
  b.write(f.name, 0, 100, "utf8");
  b.write(`${(f.mode ?? 0o644).toString(8).padStart(7, "0")}\0`, 100, "latin1");
  b.write("0000000\0", 108, "latin1");
  b.write("0000000\0", 116, "latin1");
  if (Buffer.isBuffer(f.size)) f.size.copy(b, 124);
  else b.write(`${(f.size ?? 0).toString(8).padStart(11, "0")}\0`, 124, "latin1");
  b.write(`${(f.mtime ?? 0).toString(8).padStart(11, "0")}\0`, 136, "latin1");
  b.write(f.type ?? "0", 156, "latin1");
  if (f.linkname) b.write(f.linkname, 157, 100, "utf8");
  const magic = f.magic ?? "ustar";
  if (magic === "ustar") b.write("ustar\x0000", 257, "latin1");
  else if (magic === "gnu") b.write("ustar  \0", 257, "latin1");
  if (f.prefix) b.write(f.prefix, 345, 155, "utf8");
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return b;
}

function padded(body: string | Buffer): Buffer {
  const buf = Buffer.from(body);
  return Buffer.concat([buf, Buffer.alloc((512 - (buf.length % 512)) % 512)]);
}

function paxRecord(key: string, value: string): string {
  const rest = ` ${key}=${value}\n`;
  let len = rest.length + 1;
  while (String(len).length + Buffer.byteLength(rest) !== len) len = String(len).length + Buffer.byteLength(rest);
  return `${len}${rest}`;
}

const END = Buffer.alloc(1024);

/** Entries (header name/type/size/linkname and body) the reader sees, input fed in chunks of `chunk` bytes. */
function readAll(tar: Buffer, chunk: number): { name: string; type: string | undefined; size: number; linkname: string | undefined; body: string }[] {
  const r = new TarReader();
  const out: { name: string; type: string | undefined; size: number; linkname: string | undefined; body: string }[] = [];
  for (let i = 0; i < tar.length; i += chunk) {
    r.feed(tar.subarray(i, i + chunk));
    for (let ev = r.next(); ev !== NEED; ev = r.next()) {
      if (ev === HEADER) out.push({ name: r.header.name, type: r.header.type ?? undefined, size: r.header.size, linkname: r.header.linkname ?? undefined, body: "" });
      else if (ev === DATA) out[out.length - 1]!.body += r.data.toString("latin1");
    }
  }
  r.end();
  return out;
}

async function rejects(tar: Buffer, code: string): Promise<void> {
  const out = join(tmp.path, "out");
  const err = await extractTar(out, streamOf(tar), LIMITS).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SnapshotError);
  expect((err as SnapshotError).code).toBe(code);
  const verr = await collect(validateTar(streamOf(tar), LIMITS)).then(
    () => null,
    (e: unknown) => e,
  );
  expect((verr as SnapshotError | null)?.code).toBe(code);
}

describe("tar reader", () => {
  test("every chunking of the input gives the same entries", async () => {
    const tar = await rawTar([
      { name: "a.txt", type: "file", body: "alpha" },
      { name: "dir", type: "directory" },
      { name: `dir/${"n".repeat(150)}`, type: "file", body: "x".repeat(1500) },
      { name: "l", type: "symlink", linkname: `dir/${"n".repeat(150)}` },
      { name: "empty", type: "file", body: "" },
    ]);
    const want = readAll(tar, tar.length);
    expect(want.map((e) => [e.name, e.type, e.size])).toEqual([
      ["a.txt", "file", 5],
      ["dir", "directory", 0],
      [`dir/${"n".repeat(150)}`, "file", 1500],
      ["l", "symlink", 0],
      ["empty", "file", 0],
    ]);
    expect(want[3]!.linkname).toBe(`dir/${"n".repeat(150)}`);
    for (const chunk of [1, 7, 511, 512, 513, 1000, 4096]) expect(readAll(tar, chunk)).toEqual(want);
  });

  test("GNU tar's gnu, posix (pax) and ustar formats, long names and link targets", async () => {
    const src = join(tmp.path, "src");
    const deep = join(src, "p".repeat(60), "q".repeat(60));
    await mkdir(deep, { recursive: true });
    await writeFile(join(deep, "short.txt"), "in a deep dir");
    await writeFile(join(src, `${"f".repeat(200)}.txt`), "long name");
    await symlink(`${"p".repeat(60)}/${"q".repeat(60)}/short.txt`, join(src, "long-target-link"));
    await writeFile(join(src, "ünïcödé ☃"), "utf8");
    for (const format of ["gnu", "posix", "ustar"]) {
      // ustar cannot hold the 204-byte name or the 130-byte link target; the prefix field covers the deep path.
      const excludes = format === "ustar" ? [`--exclude=${"f".repeat(200)}.txt`, "--exclude=long-target-link"] : [];
      const tar = execFileSync("tar", [`--format=${format}`, ...excludes, "-cf", "-", "-C", src, "."], { maxBuffer: 16 << 20 });
      const out = join(tmp.path, `out-${format}`);
      await extractTar(out, streamOf(tar, 333), LIMITS);
      const all = await listTree(src);
      expect(await listTree(out)).toEqual(format === "ustar" ? all.filter((l) => !l.startsWith("f".repeat(200)) && !l.startsWith("long-target-link")) : all);
      expect(await readFile(join(out, "ünïcödé ☃"), "utf8")).toBe("utf8");
    }
  });

  test("ustar prefix field", async () => {
    const tar = Buffer.concat([block({ name: "file.txt", prefix: "some/dir", size: 3 }), padded("abc"), END]);
    expect(readAll(tar, 100).map((e) => [e.name, e.body])).toEqual([["some/dir/file.txt", "abc"]]);
    // GNU headers keep other data where ustar has the prefix: not a path there.
    const gnu = Buffer.concat([block({ name: "file.txt", size: 1, magic: "gnu" }), padded("z"), END]);
    expect(readAll(gnu, 512)[0]!.name).toBe("file.txt");
  });

  test("pax 'x' headers set path, linkpath and size for the next entry only", () => {
    const pax = paxRecord("path", "from/pax.txt") + paxRecord("size", "5") + paxRecord("mtime", "1.5") + paxRecord("comment", "x=y");
    const linkPax = paxRecord("linkpath", "t".repeat(300));
    const tar = Buffer.concat([
      block({ name: "PaxHeader", type: "x", size: Buffer.byteLength(pax) }),
      padded(pax),
      block({ name: "short-name", size: 0 }), // header size 0: pax says 5
      padded("hello"),
      block({ name: "PaxHeader", type: "x", size: Buffer.byteLength(linkPax) }),
      padded(linkPax),
      block({ name: "link", type: "2", linkname: "short" }),
      block({ name: "plain", size: 2 }),
      padded("ok"),
      END,
    ]);
    expect(readAll(tar, 512).map((e) => [e.name, e.size, e.linkname, e.body])).toEqual([
      ["from/pax.txt", 5, undefined, "hello"],
      ["link", 0, "t".repeat(300), ""],
      ["plain", 2, undefined, "ok"],
    ]);
  });

  test("pax global headers are ignored (they must not rename later entries)", () => {
    const g = paxRecord("path", "../../evil");
    const tar = Buffer.concat([block({ name: "global", type: "g", size: Buffer.byteLength(g) }), padded(g), block({ name: "mine.txt", size: 1 }), padded("m"), END]);
    expect(readAll(tar, 512).map((e) => e.name)).toEqual(["mine.txt"]);
  });

  test("GNU 'L' and 'K' long names", () => {
    const long = `${"a".repeat(120)}/${"b".repeat(120)}`;
    const target = "c".repeat(200);
    const tar = Buffer.concat([
      block({ name: "././@LongLink", type: "L", size: long.length + 1, magic: "gnu" }),
      padded(`${long}\0`),
      block({ name: long.slice(0, 99), size: 1, magic: "gnu" }),
      padded("L"),
      block({ name: "././@LongLink", type: "K", size: target.length, magic: "gnu" }),
      padded(target),
      block({ name: "sym", type: "2", linkname: target.slice(0, 99), magic: "gnu" }),
      END,
    ]);
    expect(readAll(tar, 300).map((e) => [e.name, e.linkname, e.body])).toEqual([
      [long, undefined, "L"],
      ["sym", target, ""],
    ]);
  });

  test("base-256 numbers", async () => {
    const size = Buffer.alloc(12);
    size[0] = 0x80;
    size[11] = 7;
    const tar = Buffer.concat([block({ name: "b256", size }), padded("1234567"), END]);
    expect(readAll(tar, 512).map((e) => [e.name, e.size, e.body])).toEqual([["b256", 7, "1234567"]]);
    const out = join(tmp.path, "b256");
    expect(await extractTar(out, streamOf(tar), LIMITS)).toEqual({ files: 1, bytes: 7 });
    const negative = Buffer.alloc(12, 0xff);
    await rejects(Buffer.concat([block({ name: "neg", size: negative }), END]), ErrorCodes.TAR_SIZE_MISMATCH);
    const huge = Buffer.alloc(12, 0x7f);
    huge[0] = 0x80;
    await rejects(Buffer.concat([block({ name: "huge", size: huge }), END]), ErrorCodes.TAR_SIZE_MISMATCH);
  });

  test("checksums, formats and numeric fields", async () => {
    const good = Buffer.concat([block({ name: "a", size: 1 }), padded("a"), END]);
    const bad = Buffer.from(good);
    bad[0] = "b".charCodeAt(0); // name changed, checksum not
    await rejects(bad, ErrorCodes.TAR_CORRUPT);
    await rejects(Buffer.concat([block({ name: "v7", size: 1, magic: "v7" }), padded("a"), END]), ErrorCodes.TAR_CORRUPT);
    const badSize = block({ name: "a", size: 1 });
    badSize.write("0000000009x\0", 124, "latin1");
    await rejects(Buffer.concat([fixSum(badSize), padded("a"), END]), ErrorCodes.TAR_CORRUPT);
  });

  test("end of archive: marker required, only zeros after it", async () => {
    const entry = Buffer.concat([block({ name: "a", size: 1 }), padded("a")]);
    expect(readAll(Buffer.concat([entry, END, Buffer.alloc(8192)]), 1000)).toHaveLength(1);
    expect(readAll(Buffer.concat([entry, Buffer.alloc(512)]), 1000)).toHaveLength(1); // a lone zero block ends it too
    await rejects(entry, ErrorCodes.TAR_CORRUPT); // no marker: cut at an entry boundary
    await rejects(Buffer.concat([entry, block({ name: "b", size: 0 }).subarray(0, 300)]), ErrorCodes.TAR_CORRUPT); // inside a header
    await rejects(Buffer.concat([entry.subarray(0, 600)]), ErrorCodes.TAR_SIZE_MISMATCH); // inside a body's padding
    await rejects(Buffer.concat([entry, END, Buffer.from("trailing junk")]), ErrorCodes.TAR_CORRUPT);
    // Entries after the marker are data after the end, not entries.
    await rejects(Buffer.concat([entry, Buffer.alloc(512), block({ name: "hidden", size: 0 }), END]), ErrorCodes.TAR_CORRUPT);
    await rejects(Buffer.alloc(0), ErrorCodes.TAR_CORRUPT);
  });

  test("extended headers: malformed, oversized, or not followed by an entry", async () => {
    const bad = "5 path=x\n";
    await rejects(Buffer.concat([block({ name: "p", type: "x", size: bad.length }), padded(bad), block({ name: "a", size: 0 }), END]), ErrorCodes.TAR_CORRUPT);
    await rejects(Buffer.concat([block({ name: "p", type: "x", size: 2 * 1024 * 1024 }), END]), ErrorCodes.TAR_CORRUPT);
    const rec = paxRecord("path", "x");
    await rejects(Buffer.concat([block({ name: "p", type: "x", size: rec.length }), padded(rec), END]), ErrorCodes.TAR_CORRUPT);
    await rejects(Buffer.concat([block({ name: "L", type: "L", size: 4, magic: "gnu" }), padded("abc\0"), END]), ErrorCodes.TAR_CORRUPT);
    await rejects(Buffer.concat([block({ name: "p", type: "x", size: rec.length }), Buffer.from(rec).subarray(0, 3)]), ErrorCodes.TAR_CORRUPT);
  });

  test("names from pax and GNU headers go through the same rules", async () => {
    const p = (k: string, v: string) => paxRecord(k, v);
    const viaPax = (rec: string, entry: Buffer) => Buffer.concat([block({ name: "PaxHeader", type: "x", size: Buffer.byteLength(rec) }), padded(rec), entry, END]);
    await rejects(viaPax(p("path", "../escape"), block({ name: "fine", size: 0 })), ErrorCodes.TAR_PARENT_PATH);
    await rejects(viaPax(p("path", "/etc/passwd"), block({ name: "fine", size: 0 })), ErrorCodes.TAR_ABSOLUTE_PATH);
    await rejects(viaPax(p("path", "nul\0inside"), block({ name: "fine", size: 0 })), ErrorCodes.TAR_CORRUPT);
    await rejects(viaPax(p("linkpath", "x".repeat(4096)), block({ name: "l", type: "2", linkname: "ok" })), ErrorCodes.TAR_PATH_TOO_LONG);
    await rejects(viaPax(p("path", `${"a/".repeat(1600)}x`), block({ name: "fine", size: 0 })), ErrorCodes.TAR_PATH_TOO_LONG);
    await rejects(viaPax(p("size", "10"), block({ name: "d", type: "5", size: 0 })), ErrorCodes.TAR_SIZE_MISMATCH);
    const L = "/abs/name";
    await rejects(
      Buffer.concat([block({ name: "././@LongLink", type: "L", size: L.length, magic: "gnu" }), padded(L), block({ name: "fine", size: 0, magic: "gnu" }), END]),
      ErrorCodes.TAR_ABSOLUTE_PATH,
    );
    // An empty long name does not turn the entry into the (skipped) archive root.
    const emptyL = Buffer.concat([block({ name: "././@LongLink", type: "L", size: 1, magic: "gnu" }), padded("\0"), block({ name: "/etc/cron.d/x", size: 0, magic: "gnu" }), END]);
    await rejects(emptyL, ErrorCodes.TAR_ABSOLUTE_PATH);
    // Unknown typeflags (GNU sparse 'S', volume 'V') are special entries.
    await rejects(Buffer.concat([block({ name: "sparse", type: "S", size: 0 }), END]), ErrorCodes.TAR_SPECIAL_FILE);
    // Any GNU.sparse.* pax key makes a regular-looking entry a sparse one (its body is a map, not the content).
    for (const key of ["GNU.sparse.major", "GNU.sparse.map", "GNU.sparse.numblocks", "GNU.sparse.realsize", "GNU.sparse.name"]) {
      await rejects(viaPax(p(key, "1"), Buffer.concat([block({ name: "GNUSparseFile.0/f", size: 3 }), padded("abc")])), ErrorCodes.TAR_SPECIAL_FILE);
    }
  });

  test("a pax linkpath replaces the header's, verbatim (absolute targets included)", async () => {
    const rec = paxRecord("linkpath", "/usr/bin/python3");
    const tar = Buffer.concat([block({ name: "PaxHeader", type: "x", size: rec.length }), padded(rec), block({ name: "python", type: "2", linkname: "ok" }), END]);
    const out = join(tmp.path, "out");
    await extractTar(out, streamOf(tar), LIMITS);
    expect(await readlink(join(out, "python"))).toBe("/usr/bin/python3");
  });

  test("normalizeTar reads through the same reader", async () => {
    const tar = Buffer.concat([block({ name: "workspace/", type: "5", mode: 0o755 }), block({ name: "workspace/a", size: 1 }), padded("a"), END]);
    const out = normalizeTar(streamOf(tar), { stripComponents: 1 });
    await collect(out);
    expect(out.stats).toMatchObject({ files: 1, bytes: 1 });
    await expect(collect(normalizeTar(streamOf(tar.subarray(0, 1024))))).rejects.toMatchObject({ code: ErrorCodes.TAR_SIZE_MISMATCH });
  });
});

function fixSum(b: Buffer): Buffer {
  const out = Buffer.from(b);
  out.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of out) sum += x;
  out.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return out;
}
