/**
 * removeTree (providers/local/remove-tree.ts) on the real filesystem: trees a
 * job can leave in its workspace that fs.rm cannot remove (deeper than
 * PATH_MAX), links it must never follow.
 * (The mount-point refusal needs root: test/integration/local-deep-workspace.test.ts.)
 */
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { removeTree } from "../../providers/local/remove-tree.js";

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await removeTree(d);
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "sandqueue-rmtree-"));
  dirs.push(dir);
  return dir;
}

/** A file outside the tree that links inside point to; it must survive. */
function sentinel(): { dir: string; check: () => void } {
  const dir = path.join(tempDir(), "outside");
  mkdirSync(dir);
  writeFileSync(path.join(dir, "precious"), "keep me");
  return {
    dir,
    check: () => {
      expect(readdirSync(dir)).toEqual(["precious"]);
      expect(readFileSync(path.join(dir, "precious"), "utf8")).toBe("keep me");
    },
  };
}

/**
 * A chain of `depth` directories named `name` below `root`, built through
 * directory fds as a job does with relative paths: the host path is soon
 * longer than PATH_MAX. `fill` adds entries at every level (given the level's
 * directory as a /proc/self/fd path).
 */
function buildChain(root: string, depth: number, name: string, fill: (dir: string, level: number) => void): void {
  let fd = openSync(root, "r");
  try {
    for (let level = 0; level < depth; level++) {
      const dir = `/proc/self/fd/${fd}`;
      fill(dir, level);
      mkdirSync(`${dir}/${name}`);
      const child = openSync(`${dir}/${name}`, "r");
      closeSync(fd);
      fd = child;
    }
    writeFileSync(`/proc/self/fd/${fd}/bottom`, Buffer.alloc(1024 * 1024, 1));
  } finally {
    closeSync(fd);
  }
}

describe("removeTree", () => {
  it("removes a chain of directories ~50 times deeper than PATH_MAX, with links and odd names at every level, following no link", async () => {
    const outside = sentinel();
    const root = path.join(tempDir(), "tree");
    mkdirSync(root);
    const name = "d".repeat(200);
    const depth = 1000;
    buildChain(root, depth, name, (dir, level) => {
      writeFileSync(`${dir}/f`, `level ${level}`);
      symlinkSync(outside.dir, `${dir}/abs-link`); // a directory outside, by absolute path
      symlinkSync(path.join(outside.dir, "precious"), `${dir}/file-link`);
      symlinkSync("..", `${dir}/up`); // a loop
      writeFileSync(Buffer.from(`${dir}/not-utf8-\xff\xfe`, "latin1"), "x"); // only its raw bytes name it
    });
    expect(root.length + depth * (name.length + 1)).toBeGreaterThan(4096 * 45);
    // The tree is what it claims: fs.rm, which names entries by full path, gives up on it.
    const copy = path.join(tempDir(), "tree");
    mkdirSync(copy);
    buildChain(copy, 30, name, () => undefined);
    await expect(rm(copy, { recursive: true, force: true })).rejects.toMatchObject({ code: "ENAMETOOLONG" });

    await removeTree(root);
    await removeTree(copy);
    expect(existsSync(root)).toBe(false);
    expect(existsSync(copy)).toBe(false);
    outside.check();
  }, 120_000);

  it("unlinks a root that is a symlink or a file, leaves the target alone, and accepts a missing root", async () => {
    const outside = sentinel();
    const base = tempDir();
    symlinkSync(outside.dir, path.join(base, "link"));
    writeFileSync(path.join(base, "file"), "x");
    await removeTree(path.join(base, "link"));
    await removeTree(path.join(base, "file"));
    await removeTree(path.join(base, "missing"));
    expect(readdirSync(base)).toEqual([]);
    outside.check();
  });

  it("yields to the event loop while it removes a large tree", async () => {
    const root = path.join(tempDir(), "wide");
    mkdirSync(root);
    for (let d = 0; d < 5; d++) {
      mkdirSync(path.join(root, `d${d}`));
      for (let f = 0; f < 1000; f++) writeFileSync(path.join(root, `d${d}`, `f${f}`), "");
    }
    let turns = 0;
    const tick = (): void => {
      turns++;
      if (!done) setImmediate(tick);
    };
    let done = false;
    setImmediate(tick);
    await removeTree(root);
    done = true;
    expect(existsSync(root)).toBe(false);
    // 5 000 unlinks take many 1 ms slices; a single synchronous pass would allow no turn at all.
    expect(turns).toBeGreaterThan(5);
  }, 60_000);
});
