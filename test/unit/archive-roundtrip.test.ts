import { execFileSync } from "node:child_process";
import { chmod, lstat, mkdir, readFile, readlink, stat, symlink, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import { compileExcludes, extractTar, filesToTar, MAX_ARCHIVE_PATH_BYTES, normalizeTar, packDir, validateTar } from "../../providers/archive/index.js";
import { collect, LIMITS, listTree, makeDeep, rawTar, removeDeep, sha, streamOf, tempDir } from "./archive-helpers.js";

let tmp: { path: string; cleanup: () => Promise<void> };
let src: string;

beforeEach(async () => {
  tmp = await tempDir();
  src = join(tmp.path, "src");
  await mkdir(join(src, "dir/sub"), { recursive: true });
  await mkdir(join(src, "empty"));
  await writeFile(join(src, "dir/a.txt"), "alpha\n");
  await writeFile(join(src, "dir/sub/run.sh"), "#!/bin/sh\necho hi\n");
  await chmod(join(src, "dir/sub/run.sh"), 0o755);
  await writeFile(join(src, "private"), "secret-ish");
  await chmod(join(src, "private"), 0o600);
  await writeFile(join(src, "héllo wörld ☃.txt"), "unicode");
  const longName = `${"d".repeat(90)}/${"f".repeat(120)}.txt`;
  await mkdir(join(src, "d".repeat(90)));
  await writeFile(join(src, longName), "long");
  await symlink("dir/a.txt", join(src, "link-to-a"));
  await symlink("sub", join(src, "dir/link-to-sub"));
});
afterEach(async () => tmp.cleanup());

describe("packDir -> extractTar round trip", () => {
  test("files, empty dirs, symlinks, modes, unicode and long names", async () => {
    const out = join(tmp.path, "out");
    const tar = packDir(src);
    const stats = await extractTar(out, tar, LIMITS);
    expect(stats.files).toBe(5);
    expect(tar.stats.files).toBe(5);
    expect(await listTree(out)).toEqual(await listTree(src));
    expect(await readlink(join(out, "link-to-a"))).toBe("dir/a.txt");
    expect((await stat(join(out, "dir/sub/run.sh"))).mode & 0o777).toBe(0o755);
    expect((await stat(join(out, "private"))).mode & 0o777).toBe(0o600);
    expect((await lstat(join(out, "empty"))).isDirectory()).toBe(true);
    expect((await stat(out)).mode & 0o777).toBe(0o755);
    // A target whose parents do not exist yet.
    await extractTar(join(tmp.path, "a/b/c"), packDir(src), LIMITS);
    expect(await listTree(join(tmp.path, "a/b/c"))).toEqual(await listTree(src));
  });

  test("GNU tar reads what packDir writes, and extractTar reads what GNU tar writes", async () => {
    const buf = await collect(packDir(src));
    const viaTar = join(tmp.path, "via-gnu");
    await mkdir(viaTar);
    execFileSync("tar", ["-xf", "-", "-C", viaTar], { input: buf });
    expect(await listTree(viaTar)).toEqual(await listTree(src));
    const gnu = execFileSync("tar", ["-cf", "-", "-C", src, "."], { maxBuffer: 64 << 20 });
    const out = join(tmp.path, "from-gnu");
    await extractTar(out, streamOf(gnu), LIMITS);
    expect(await listTree(out)).toEqual(await listTree(src));
  });

  test("deterministic: same tree, same bytes; owners and mtimes normalised", async () => {
    const a = await collect(packDir(src));
    const copy = join(tmp.path, "copy");
    execFileSync("cp", ["-a", src, copy]);
    execFileSync("touch", ["-d", "2001-01-01", join(copy, "dir/a.txt")]);
    const b = await collect(packDir(copy));
    expect(sha(a)).toBe(sha(b));
    const listing = execFileSync("tar", ["-tvf", "-", "--numeric-owner"], { input: a }).toString();
    for (const line of listing.trim().split("\n")) expect(line).toMatch(/ 0\/0 .*1970-01-01/);
    const kept = await collect(packDir(copy, { keepMtime: true }));
    expect(sha(kept)).not.toBe(sha(a));
  });

  test("merging into an existing workspace replaces files and keeps the rest", async () => {
    const out = join(tmp.path, "ws");
    await mkdir(out);
    await writeFile(join(out, "mine.txt"), "keep me");
    await writeFile(join(out, "private"), "old");
    await extractTar(out, packDir(src), LIMITS);
    expect(await readFile(join(out, "mine.txt"), "utf8")).toBe("keep me");
    expect(await readFile(join(out, "private"), "utf8")).toBe("secret-ish");
    await extractTar(out, filesToTar({ "dir/a.txt": "replaced", "new/deep/file.txt": "n" }), LIMITS);
    expect(await readFile(join(out, "dir/a.txt"), "utf8")).toBe("replaced");
    expect(await readFile(join(out, "new/deep/file.txt"), "utf8")).toBe("n");
  });

  test("a large file streams through with little memory", async () => {
    const big = join(src, "big.bin");
    await writeFile(big, "start");
    await truncate(big, 384 * 1024 * 1024);
    const base = process.memoryUsage().rss;
    let peak = base;
    const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
    try {
      const out = join(tmp.path, "big-out");
      const stats = await extractTar(out, packDir(src), { ...LIMITS, maxBytes: 1 << 30 });
      expect(stats.bytes).toBeGreaterThan(384 * 1024 * 1024);
      expect((await stat(join(out, "big.bin"))).size).toBe(384 * 1024 * 1024);
    } finally {
      clearInterval(timer);
    }
    expect((peak - base) / 1024 / 1024).toBeLessThan(96);
  }, 120_000);
});

describe("packDir filtering and limits", () => {
  test("excludes with *, ?, ** and directory matches", async () => {
    await mkdir(join(src, "node_modules/x"), { recursive: true });
    await writeFile(join(src, "node_modules/x/i.js"), "1");
    await mkdir(join(src, "dir/sub/__pycache__"), { recursive: true });
    await writeFile(join(src, "dir/sub/__pycache__/m.pyc"), "1");
    await writeFile(join(src, "dir/b.log"), "1");
    await writeFile(join(src, "c1.tmp"), "1");
    const out = join(tmp.path, "out");
    await extractTar(out, packDir(src, { exclude: ["node_modules", "**/__pycache__", "**/*.log", "c?.tmp"] }), LIMITS);
    const tree = (await listTree(out)).join("\n");
    expect(tree).not.toMatch(/node_modules|__pycache__|b\.log|c1\.tmp/);
    expect(tree).toMatch(/dir\/a\.txt/);
  });

  test("glob matcher", () => {
    const m = compileExcludes(["a/**/z", "*.txt", ".git/"])!;
    expect(m("a/z")).toBe(true);
    expect(m("a/b/c/z")).toBe(true);
    expect(m("a/b/z/inner")).toBe(true);
    expect(m("x.txt")).toBe(true);
    expect(m("d/x.txt")).toBe(false);
    expect(m(".git/objects/ab")).toBe(true);
    expect(m("b/z")).toBe(false);
  });

  test("special files skipped, setid bits dropped", async () => {
    execFileSync("mkfifo", [join(src, "pipe")]);
    await chmod(join(src, "dir/a.txt"), 0o4755);
    const tar = packDir(src);
    const buf = await collect(tar);
    expect(tar.stats.skipped).toBe(1);
    const out = join(tmp.path, "out");
    await extractTar(out, streamOf(buf), LIMITS); // passes the strict rules
    expect((await listTree(out)).join("\n")).not.toMatch(/pipe/);
    expect((await stat(join(out, "dir/a.txt"))).mode & 0o7777).toBe(0o755);
  });

  test("links pointing anywhere round-trip as links; the host never reads through them", async () => {
    // A venv's interpreter link, and links out of the tree to a host directory holding a marker.
    const host = join(tmp.path, "host-side");
    await mkdir(host);
    const marker = `host-content-${process.pid}-${Date.now()}`;
    await writeFile(join(host, "secret.txt"), marker);
    await mkdir(join(src, "venv/bin"), { recursive: true });
    await symlink("/usr/bin/python3", join(src, "venv/bin/python"));
    await symlink(host, join(src, "abs-dir"));
    await symlink(join(host, "secret.txt"), join(src, "abs-file"));
    await symlink("../host-side", join(src, "up-dir"));
    await symlink("../../host-side/secret.txt", join(src, "dir/up-file"));
    const first = packDir(src);
    const buf = await collect(first);
    expect(first.stats.skipped).toBe(0);
    expect(buf.toString("latin1")).not.toContain(marker); // packing lstat()s, never opens or lists through a link
    const out = join(tmp.path, "out");
    await extractTar(out, streamOf(buf), LIMITS);
    expect(await readlink(join(out, "venv/bin/python"))).toBe("/usr/bin/python3");
    expect(await readlink(join(out, "abs-dir"))).toBe(host);
    expect(await readlink(join(out, "abs-file"))).toBe(join(host, "secret.txt"));
    expect(await readlink(join(out, "up-dir"))).toBe("../host-side");
    expect(await readlink(join(out, "dir/up-file"))).toBe("../../host-side/secret.txt");
    // Persisting the hydrated workspace again: same bytes, still no host content.
    expect(sha(await collect(packDir(out)))).toBe(sha(buf));
    // A later hydrate never writes through them: refused, the host side untouched.
    for (const below of ["abs-dir/secret.txt", "up-dir/new.txt", "venv/bin/python/x"]) {
      await expect(extractTar(out, filesToTar({ [below]: "pwned" }), LIMITS)).rejects.toMatchObject({ code: ErrorCodes.TAR_THROUGH_SYMLINK });
    }
    // A file over one replaces the link, not what it points at.
    await extractTar(out, filesToTar({ "abs-file": "mine" }), LIMITS);
    expect(await readFile(join(out, "abs-file"), "utf8")).toBe("mine");
    expect(await readFile(join(host, "secret.txt"), "utf8")).toBe(marker);
    expect((await listTree(host)).length).toBe(1);
  });

  test("a path longer than MAX_ARCHIVE_PATH_BYTES fails with WORKSPACE_LIMIT, even past PATH_MAX, unless excluded", async () => {
    // 22 x 200 bytes: the relative path alone is past PATH_MAX (what a job can build with `mkdir d; cd d` in a loop).
    const rel = await makeDeep(src, "d".repeat(199), 22);
    expect(Buffer.byteLength(rel)).toBeGreaterThan(4096);
    try {
      const limits = { maxDepth: 64 };
      const err = await collect(packDir(src, limits)).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: ErrorCodes.WORKSPACE_LIMIT, retryable: false, details: { limit: "path length" } });
      expect((err as Error).message).not.toContain(tmp.path);
      // Up to the limit it packs; one byte more does not.
      await writeFile(join(src, rel.slice(0, 15 * 200 - 1), "f".repeat(MAX_ARCHIVE_PATH_BYTES - 15 * 200)), "x");
      const fits = await collect(packDir(src, { ...limits, exclude: [rel.slice(0, 16 * 200 - 1)] }));
      expect(execFileSync("tar", ["-tf", "-"], { input: fits }).toString()).toContain(`${"f".repeat(MAX_ARCHIVE_PATH_BYTES - 15 * 200)}\n`);
      await writeFile(join(src, rel.slice(0, 15 * 200 - 1), "g".repeat(MAX_ARCHIVE_PATH_BYTES - 15 * 200 + 1)), "x");
      await expect(collect(packDir(src, { ...limits, exclude: [rel.slice(0, 16 * 200 - 1)] }))).rejects.toMatchObject({ code: ErrorCodes.WORKSPACE_LIMIT });
    } finally {
      await removeDeep(join(src, "d".repeat(199)));
    }
  });

  test("limits fail with WORKSPACE_LIMIT", async () => {
    await expect(collect(packDir(src, { maxBytes: 10 }))).rejects.toMatchObject({ code: ErrorCodes.WORKSPACE_LIMIT });
    await expect(collect(packDir(src, { maxEntries: 3 }))).rejects.toMatchObject({ code: ErrorCodes.WORKSPACE_LIMIT });
    await expect(collect(packDir(src, { maxDepth: 2 }))).rejects.toMatchObject({ code: ErrorCodes.WORKSPACE_LIMIT });
  });
});

describe("normalizeTar, validateTar, filesToTar", () => {
  test("normalizeTar strips the engine's top directory, drops hardlinks and devices, zeroes owners", async () => {
    const engine = await rawTar([
      { name: "workspace/", type: "directory", mode: 0o755 },
      { name: "workspace/a.txt", type: "file", mode: 0o6755, uid: 1000, gid: 1000, uname: "user", body: "A" },
      { name: "workspace/hard", type: "link", linkname: "workspace/a.txt" },
      { name: "workspace/null", type: "character-device", devmajor: 1, devminor: 3 },
      { name: "workspace/skip/me", type: "file", body: "S" },
    ]);
    const tar = normalizeTar(streamOf(engine), { stripComponents: 1, exclude: ["skip"] });
    const buf = await collect(tar);
    expect(tar.stats).toMatchObject({ files: 1, skipped: 2 });
    const listing = execFileSync("tar", ["-tvf", "-", "--numeric-owner"], { input: buf }).toString().trim();
    expect(listing.split("\n")).toHaveLength(1);
    expect(listing).toMatch(/^-rwxr-xr-x 0\/0 +1 1970-01-01 00:00 a\.txt$/);
    await expect(collect(normalizeTar(streamOf(engine), { stripComponents: 1, maxBytes: 0 }))).rejects.toMatchObject({
      code: ErrorCodes.WORKSPACE_LIMIT,
    });
  });

  test("validateTar passes a good archive through unchanged in content", async () => {
    const good = await collect(packDir(src));
    const out = await collect(validateTar(streamOf(good), LIMITS));
    expect(sha(out)).toBe(sha(good));
  });

  test("filesToTar", async () => {
    const out = join(tmp.path, "files");
    const stats = await extractTar(out, filesToTar({ "b.py": "print(1)\n", "a/c.txt": "ü" }), LIMITS);
    expect(stats).toEqual({ files: 2, bytes: 9 + 2 });
    expect(await readFile(join(out, "a/c.txt"), "utf8")).toBe("ü");
    await expect(collect(filesToTar({ "../x": "no" }))).rejects.toMatchObject({ code: ErrorCodes.TAR_PARENT_PATH });
  });

  test("abort signal stops an extraction and writes nothing", async () => {
    const ac = new AbortController();
    ac.abort(new Error("cancelled"));
    const out = join(tmp.path, "aborted");
    await expect(extractTar(out, packDir(src), { ...LIMITS, signal: ac.signal })).rejects.toThrow("cancelled");
    await expect(stat(out)).rejects.toMatchObject({ code: "ENOENT" });
  });
});
