import { execFileSync } from "node:child_process";
import { chmod, lstat, mkdir, readFile, readlink, stat, symlink, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import { compileExcludes, extractTar, filesToTar, normalizeTar, packDir, validateTar } from "../../providers/archive/index.js";
import { collect, LIMITS, listTree, rawTar, sha, streamOf, tempDir } from "./archive-helpers.js";

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

  test("special files skipped, setid bits and escaping links dropped", async () => {
    execFileSync("mkfifo", [join(src, "pipe")]);
    await chmod(join(src, "dir/a.txt"), 0o4755);
    await symlink("/etc/passwd", join(src, "abs-link"));
    await symlink("../../outside", join(src, "dir/up-link"));
    const tar = packDir(src);
    const buf = await collect(tar);
    expect(tar.stats.skipped).toBe(3);
    const out = join(tmp.path, "out");
    await extractTar(out, streamOf(buf), LIMITS); // passes the strict rules
    const tree = (await listTree(out)).join("\n");
    expect(tree).not.toMatch(/pipe|abs-link|up-link/);
    expect((await stat(join(out, "dir/a.txt"))).mode & 0o7777).toBe(0o755);
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
