import { mkdir, readdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { ErrorCodes, SnapshotError } from "../../errors/index.js";
import { extractTar, validateTar } from "../../providers/archive/index.js";
import { collect, LIMITS, listTree, rawTar, setTypeflag, streamOf, tempDir, type RawEntry } from "./archive-helpers.js";

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

  test("symlink targets that leave the root", async () => {
    await expectRejected(await rawTar([{ name: "l", type: "symlink", linkname: "/etc/passwd" }]), ErrorCodes.TAR_LINK_OUTSIDE);
    await expectRejected(await rawTar([{ name: "a/l", type: "symlink", linkname: "../../x" }]), ErrorCodes.TAR_LINK_OUTSIDE);
  });

  test("symlink chains that leave the root only together (either order)", async () => {
    const up: RawEntry = { name: "up", type: "symlink", linkname: "." };
    const p: RawEntry = { name: "p", type: "symlink", linkname: "up/.." };
    await expectRejected(await rawTar([up, p]), ErrorCodes.TAR_LINK_OUTSIDE);
    await expectRejected(await rawTar([p, up]), ErrorCodes.TAR_LINK_OUTSIDE);
  });

  test("a symlink that escapes only together with a symlink already in the target", async () => {
    await symlink(".", join(target, "up"));
    before = await listTree(tmp.path);
    await expect(extractTar(target, streamOf(await rawTar([{ name: "p", type: "symlink", linkname: "up/.." }])), LIMITS)).rejects.toMatchObject({
      code: ErrorCodes.TAR_LINK_OUTSIDE,
    });
    expect(await listTree(tmp.path)).toEqual(before);
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
