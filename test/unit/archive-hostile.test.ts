import { execFileSync } from "node:child_process";
import { mkdir, readdir, readFile, readlink, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { ErrorCodes, SnapshotError } from "../../errors/index.js";
import { extractTar, MAX_ARCHIVE_PATH_BYTES, MAX_ARCHIVE_SEGMENT_BYTES, packDir, validateTar } from "../../providers/archive/index.js";
import { collect, LIMITS, listTree, rawTar, removeDeep, setTypeflag, streamOf, tempDir, type RawEntry } from "./archive-helpers.js";

let tmp: { path: string; cleanup: () => Promise<void> };
let target: string;
let before: string[];

beforeEach(async () => {
  tmp = await tempDir();
  target = join(tmp.path, "ws");
  await mkdir(target);
  await writeFile(join(target, "keep.txt"), "existing");
  before = await listTree(tmp.path);
});
afterEach(async () => tmp.cleanup());

async function expectRejected(tar: Buffer, code: string, limits = LIMITS): Promise<void> {
  const err = await extractTar(target, streamOf(tar), limits).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SnapshotError);
  expect((err as SnapshotError).code).toBe(code);
  expect((err as SnapshotError).retryable).toBe(false);
  // Nothing written: the target and its parent (where staging lives) are as before.
  expect(await listTree(tmp.path)).toEqual(before);
  // The pass-through validator refuses the same archive with the same code.
  const verr = await collect(validateTar(streamOf(tar), limits)).then(
    () => null,
    (e: unknown) => e,
  );
  expect((verr as SnapshotError | null)?.code).toBe(code);
}

const file = (name: string, body = "x", extra: Partial<RawEntry> = {}): RawEntry => ({ name, type: "file", mode: 0o644, body, ...extra });

describe("extractTar / validateTar reject hostile archives and write nothing", () => {
  test("absolute path", async () => {
    await expectRejected(await rawTar([file("ok.txt"), file("/etc/evil")]), ErrorCodes.TAR_ABSOLUTE_PATH);
  });

  test("parent path", async () => {
    await expectRejected(await rawTar([file("ok.txt"), file("a/../../evil")]), ErrorCodes.TAR_PARENT_PATH);
    await expectRejected(await rawTar([file("..")]), ErrorCodes.TAR_PARENT_PATH);
  });

  test("entry through a symlink created earlier in the archive", async () => {
    await expectRejected(
      await rawTar([{ name: "sub", type: "directory" }, { name: "l", type: "symlink", linkname: "sub" }, file("l/x")]),
      ErrorCodes.TAR_THROUGH_SYMLINK,
    );
  });

  test("entry through a symlink already in the target directory", async () => {
    await symlink("/etc", join(target, "etc-link"));
    before = await listTree(tmp.path);
    await expect(extractTar(target, streamOf(await rawTar([file("etc-link/passwd")])), LIMITS)).rejects.toMatchObject({
      code: ErrorCodes.TAR_THROUGH_SYMLINK,
    });
    expect(await listTree(tmp.path)).toEqual(before);
  });

  test("links pointing out of the workspace are kept as links; nothing is ever written through one", async () => {
    // Absolute and climbing targets only mean something inside the sandbox (its own root); the host never follows them.
    const links: RawEntry[] = [
      { name: "venv/bin/python", type: "symlink", linkname: "/usr/bin/python3" },
      { name: "etc", type: "symlink", linkname: "/etc" },
      { name: "a/up", type: "symlink", linkname: "../../../../etc" },
      { name: "self", type: "symlink", linkname: "." },
      { name: "p", type: "symlink", linkname: "self/.." },
    ];
    await extractTar(target, streamOf(await rawTar(links)), LIMITS);
    before = await listTree(tmp.path);
    expect((await listTree(target)).filter((l) => l.includes("->"))).toEqual([
      "a/up -> ../../../../etc",
      "etc -> /etc",
      "p -> self/..",
      "self -> .",
      "venv/bin/python -> /usr/bin/python3",
    ]);
    // Later entries below any of them: in the same archive, or merged into a target that has them.
    for (const below of ["etc/passwd", "a/up/passwd", "p/escaped", "venv/bin/python/x"]) {
      await expectRejected(await rawTar([...links, file(below)]), ErrorCodes.TAR_THROUGH_SYMLINK);
      before = await listTree(tmp.path);
      await expect(extractTar(target, streamOf(await rawTar([file("ok"), file(below)])), LIMITS)).rejects.toMatchObject({
        code: ErrorCodes.TAR_THROUGH_SYMLINK,
      });
      expect(await listTree(tmp.path)).toEqual(before);
    }
    // A file or link over one replaces the link itself; its target is untouched.
    const outside = join(tmp.path, "outside.txt");
    await writeFile(outside, "host file");
    await symlink(outside, join(target, "to-host"));
    await extractTar(target, streamOf(await rawTar([file("to-host", "replaced")])), LIMITS);
    expect(await readFile(outside, "utf8")).toBe("host file");
    expect(await readFile(join(target, "to-host"), "utf8")).toBe("replaced");
  });

  test("a file where the target has a directory", async () => {
    await mkdir(join(target, "d"));
    before = await listTree(tmp.path);
    await expect(extractTar(target, streamOf(await rawTar([file("ok"), file("d")])), LIMITS)).rejects.toMatchObject({
      code: ErrorCodes.TAR_DUPLICATE,
    });
    expect(await listTree(tmp.path)).toEqual(before);
  });

  test("an input stream that breaks keeps its own (retryable) error and writes nothing", async () => {
    const good = await rawTar([file("a", "x".repeat(4000)), file("b", "y".repeat(4000))]);
    const netErr = Object.assign(new Error("ECONNRESET from the store"), { retryable: true });
    const broken = Readable.from(
      (async function* () {
        yield good.subarray(0, 3000);
        throw netErr;
      })(),
    );
    await expect(extractTar(target, broken, LIMITS)).rejects.toBe(netErr);
    expect(await listTree(tmp.path)).toEqual(before);
  });

  test("hardlink", async () => {
    await expectRejected(await rawTar([file("a"), { name: "b", type: "link", linkname: "a" }]), ErrorCodes.TAR_HARDLINK);
  });

  test("device and fifo entries", async () => {
    await expectRejected(await rawTar([{ name: "null", type: "character-device", devmajor: 1, devminor: 3 }]), ErrorCodes.TAR_SPECIAL_FILE);
    await expectRejected(await rawTar([{ name: "disk", type: "block-device", devmajor: 8, devminor: 0 }]), ErrorCodes.TAR_SPECIAL_FILE);
    await expectRejected(await rawTar([{ name: "pipe", type: "fifo" }]), ErrorCodes.TAR_SPECIAL_FILE);
  });

  test("setuid, setgid and sticky bits", async () => {
    await expectRejected(await rawTar([file("suid", "x", { mode: 0o4755 })]), ErrorCodes.TAR_SETID);
    await expectRejected(await rawTar([file("sgid", "x", { mode: 0o2755 })]), ErrorCodes.TAR_SETID);
    await expectRejected(await rawTar([{ name: "d", type: "directory", mode: 0o1777 }]), ErrorCodes.TAR_SETID);
  });

  test("sizes that disagree: a directory with a body, a truncated body", async () => {
    const dirWithBody = setTypeflag(await rawTar([file("d", "z".repeat(1024))]), 0, "5");
    await expectRejected(dirWithBody, ErrorCodes.TAR_SIZE_MISMATCH);
    const linkWithBody = setTypeflag(await rawTar([file("l", "z".repeat(10), { linkname: "x" } as Partial<RawEntry>)]), 0, "2");
    await expectRejected(linkWithBody, ErrorCodes.TAR_SIZE_MISMATCH);
    const good = await rawTar([file("big", "y".repeat(5000))]);
    await expectRejected(good.subarray(0, 512 + 2048), ErrorCodes.TAR_SIZE_MISMATCH);
  });

  test("caps on bytes, entries and depth", async () => {
    await expectRejected(await rawTar([file("a", "x".repeat(600)), file("b", "x".repeat(600))]), ErrorCodes.TAR_TOO_LARGE, { ...LIMITS, maxBytes: 1000 });
    await expectRejected(await rawTar([file("a"), file("b"), file("c")]), ErrorCodes.TAR_TOO_MANY_ENTRIES, { ...LIMITS, maxEntries: 2 });
    await expectRejected(await rawTar([file("a/b/c/d/e")]), ErrorCodes.TAR_PATH_TOO_DEEP, { ...LIMITS, maxDepth: 4 });
  });

  test("duplicate entries", async () => {
    await expectRejected(await rawTar([file("a"), file("b"), file("./a")]), ErrorCodes.TAR_DUPLICATE);
    await expectRejected(await rawTar([file("a"), file("a/b")]), ErrorCodes.TAR_DUPLICATE);
  });

  test("paths longer than a workspace can hold: TAR_PATH_TOO_LONG, without the host's paths in the message", async () => {
    const seg = "d".repeat(200);
    const at = (bytes: number) => `${`${seg}/`.repeat(Math.floor(bytes / 201))}${"f".repeat(bytes % 201 || 1)}`.slice(0, bytes);
    const deep = { ...LIMITS, maxDepth: 64 };
    expect(Buffer.byteLength(at(MAX_ARCHIVE_PATH_BYTES + 1))).toBe(MAX_ARCHIVE_PATH_BYTES + 1);
    for (const name of [at(4096), at(MAX_ARCHIVE_PATH_BYTES + 1), `a/${"s".repeat(MAX_ARCHIVE_SEGMENT_BYTES + 1)}`]) {
      await expectRejected(await rawTar([file("ok"), file(name)]), ErrorCodes.TAR_PATH_TOO_LONG, deep);
      const err = (await extractTar(target, streamOf(await rawTar([file(name)])), deep).catch((e: unknown) => e)) as SnapshotError;
      expect(err.message).toMatch(/limited to \d+ bytes/);
      expect(err.message).not.toContain(tmp.path);
    }
    await expectRejected(await rawTar([{ name: "l", type: "symlink", linkname: "x".repeat(4096) }]), ErrorCodes.TAR_PATH_TOO_LONG);
  });

  test("a path of exactly the maximum extracts wherever the workspace lives (a host prefix of 1.5 KiB)", async () => {
    // The host path of the entry is ~4.6 KiB, past PATH_MAX: only the fd-relative paths make it work.
    let host = tmp.path;
    while (Buffer.byteLength(host) < 1500) host = join(host, "h".repeat(250));
    await mkdir(host, { recursive: true });
    const name = `${"d".repeat(200)}/`.repeat(15).concat("f".repeat(MAX_ARCHIVE_PATH_BYTES - 15 * 201));
    expect(Buffer.byteLength(name)).toBe(MAX_ARCHIVE_PATH_BYTES);
    const ws = join(host, "ws");
    await extractTar(ws, streamOf(await rawTar([file(name, "deep"), { name: "l", type: "symlink", linkname: "y".repeat(4095) }])), { ...LIMITS, maxDepth: 64 });
    // Packing it again (the persist of that workspace) gives the entries back; read them where the host can name them.
    const back = join(tmp.path, "back");
    await extractTar(back, packDir(ws), { ...LIMITS, maxDepth: 64 });
    expect(await readFile(join(back, name), "utf8")).toBe("deep");
    expect(await readlink(join(back, "l"))).toBe("y".repeat(4095));
    await removeDeep(ws); // fs.rm in afterEach would hit ENAMETOOLONG
  });

  test("GNU sparse files, old and pax formats 0.0, 0.1 and 1.0, are refused as special entries", async () => {
    const src = join(tmp.path, "sparse-src");
    await mkdir(src);
    // A hole, 4 bytes of data at 40000, a hole to 86016.
    execFileSync("sh", ["-c", "truncate -s 86016 sp && printf data | dd of=sp bs=1 seek=40000 conv=notrunc status=none"], { cwd: src });
    before = await listTree(tmp.path);
    const variants = [["--format=gnu"], ...["0.0", "0.1", "1.0"].map((v) => ["--format=posix", `--sparse-version=${v}`])];
    for (const args of variants) {
      const tar = execFileSync("tar", ["-c", "--sparse", ...args, "-f", "-", "sp"], { cwd: src });
      await expectRejected(Buffer.concat([await rawTar([file("ok")]).then((b) => b.subarray(0, 1024)), tar]), ErrorCodes.TAR_SPECIAL_FILE);
      const err = (await extractTar(target, streamOf(tar), LIMITS).catch((e: unknown) => e)) as SnapshotError;
      expect(err.message, args.join(" ")).toContain("sparse");
    }
  });

  test("the archive root './': a directory is accepted, anything else is refused as it would be elsewhere", async () => {
    const root = (extra: Partial<RawEntry>): RawEntry => ({ name: "./", type: "directory", mode: 0o755, ...extra });
    await expectRejected(await rawTar([root({ type: "link", linkname: "/etc/passwd" }), file("ok")]), ErrorCodes.TAR_HARDLINK);
    await expectRejected(await rawTar([root({ name: ".", type: "symlink", linkname: "/etc" }), file("ok")]), ErrorCodes.TAR_DUPLICATE);
    await expectRejected(await rawTar([root({ name: ".", type: "file", body: "z".repeat(1024 * 1024) }), file("ok")]), ErrorCodes.TAR_DUPLICATE);
    await expectRejected(await rawTar([root({ name: ".", type: "fifo" })]), ErrorCodes.TAR_SPECIAL_FILE);
    await expectRejected(await rawTar([root({ mode: 0o1777 })]), ErrorCodes.TAR_SETID);
    await expectRejected(setTypeflag(await rawTar([{ name: ".", type: "file", mode: 0o755, body: "z".repeat(600) }]), 0, "5"), ErrorCodes.TAR_SIZE_MISMATCH);
    // What GNU tar writes for `tar -C dir .`: a './' directory first.
    const stats = await extractTar(target, streamOf(await rawTar([root({}), file("./new.txt", "hi")])), LIMITS);
    expect(stats).toEqual({ files: 1, bytes: 2 });
    expect((await readdir(target)).sort()).toEqual(["keep.txt", "new.txt"]);
  });

  test("corrupt data", async () => {
    const junk = Buffer.alloc(2048, 0x41);
    await expectRejected(junk, ErrorCodes.TAR_CORRUPT);
  });

  test("a valid archive after all this still extracts (the rules are not stuck)", async () => {
    const stats = await extractTar(target, streamOf(await rawTar([file("new.txt", "hi")])), LIMITS);
    expect(stats).toEqual({ files: 1, bytes: 2 });
    expect((await readdir(target)).sort()).toEqual(["keep.txt", "new.txt"]);
  });
});
