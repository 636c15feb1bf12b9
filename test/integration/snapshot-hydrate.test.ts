/**
 * Hydrating from the file store through the block path: the hash thread
 * reads and hashes the object into its ring while extractTar parses and
 * writes from the same memory. Checks that the path is taken, that it
 * verifies like the stream path, that failures (hostile content, damage,
 * truncation, abort) leave nothing behind and release the fd and the ring,
 * and that concurrent hydrates keep apart.
 */
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pathToFileURL } from "node:url";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import { extractTar, packDir } from "../../providers/archive/index.js";
import { claimBlockSource } from "../../providers/archive/block-source.js";
import { hydrateWorkspace, openSnapshotStore, persistWorkspace, type SnapshotStore } from "../../worker/snapshot/index.js";
import { listTree, rawTar } from "../unit/archive-helpers.js";

const LIMITS = { maxBytes: 1 << 30, maxEntries: 10_000, maxDepth: 32 };
const openFds = () => readdirSync("/proc/self/fd").length;

let root: string;
let store: SnapshotStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "sq-hydrate-"));
  store = openSnapshotStore(pathToFileURL(join(root, "store")).href);
});
afterEach(async () => {
  await store.close();
  await rm(root, { recursive: true, force: true });
});

/** A workspace larger than the hash thread's 4 MiB ring, with many small files. */
async function makeWorkspace(dir: string, seed = 0): Promise<void> {
  await mkdir(join(dir, "small"), { recursive: true });
  await writeFile(join(dir, "big.bin"), randomBytes(9 * 1024 * 1024 + 333 + seed));
  for (let i = 0; i < 200; i++) await writeFile(join(dir, "small", `f${i}.txt`), `${seed}:${i}:${"x".repeat(i * 37)}`);
  await writeFile(join(dir, "medium.bin"), randomBytes(700_000));
}

const objectPath = (id: string) => join(root, "store", "sha256", `${id.slice(7)}.tar`);

describe("file store -> extractTar block path", () => {
  test("a fresh get offers the block path; a stream already read from does not", async () => {
    const ws = join(root, "ws");
    await makeWorkspace(ws);
    const ref = await persistWorkspace(packDir(ws), store);
    const fresh = await store.get(ref.id);
    const blocks = claimBlockSource(fresh);
    expect(blocks).not.toBeNull();
    expect(claimBlockSource(fresh)).toBeNull(); // claimed once
    await blocks!.close();
    expect(fresh.destroyed).toBe(true);

    const started = await store.get(ref.id);
    started.read(0); // starts reading; the first block stays buffered in the stream
    await once(started, "readable");
    expect(claimBlockSource(started)).toBeNull();
    // extractTar then reads it as a stream, verified all the same.
    expect(await extractTar(join(root, "out-stream"), started, LIMITS)).toMatchObject({ files: 202 });
  });

  test("hydrates exactly the tree, and leaves no fd open", async () => {
    const ws = join(root, "ws");
    await makeWorkspace(ws);
    const ref = await persistWorkspace(packDir(ws), store);
    const fds = openFds();
    const out = join(root, "out");
    expect(await hydrateWorkspace(store, ref.id, out, { limits: LIMITS })).toMatchObject({ files: 202 });
    expect(await listTree(out)).toEqual(await listTree(ws));
    expect(openFds()).toBe(fds);
  });

  test("concurrent hydrates of different objects keep apart", async () => {
    const refs = [];
    for (let i = 0; i < 3; i++) {
      const ws = join(root, `ws${i}`);
      await makeWorkspace(ws, i);
      refs.push(await persistWorkspace(packDir(ws), store));
    }
    await Promise.all(refs.map((r, i) => hydrateWorkspace(store, r.id, join(root, `out${i}`), { limits: LIMITS })));
    for (let i = 0; i < 3; i++) expect(await listTree(join(root, `out${i}`))).toEqual(await listTree(join(root, `ws${i}`)));
  }, 60_000);

  test("a hostile archive in the store is rejected by the rules, writes nothing, and frees the fd and ring", async () => {
    const evil = await rawTar([
      { name: "ok.txt", type: "file", body: "x".repeat(3 * 1024 * 1024) },
      { name: "../escape", type: "file", body: "no" },
    ]);
    const put = await store.put(Readable.from([evil]));
    const fds = openFds();
    for (let i = 0; i < 6; i++) {
      // More attempts than the thread has pooled rings: each failure must give its ring back.
      await expect(hydrateWorkspace(store, put.id, join(root, "out"), { limits: LIMITS })).rejects.toMatchObject({ code: ErrorCodes.TAR_PARENT_PATH });
    }
    expect(openFds()).toBe(fds);
    expect((await readdir(root)).sort()).toEqual(["store"]);
    const ws = join(root, "ws");
    await makeWorkspace(ws);
    const ref = await persistWorkspace(packDir(ws), store);
    await hydrateWorkspace(store, ref.id, join(root, "after"), { limits: LIMITS });
    expect(await listTree(join(root, "after"))).toEqual(await listTree(ws));
  }, 60_000);

  test("damage anywhere (a header, a body, the tail) and truncation fail the hydrate and leave no target", async () => {
    const ws = join(root, "ws");
    await makeWorkspace(ws);
    const ref = await persistWorkspace(packDir(ws), store);
    const original = await readFile(objectPath(ref.id));
    const damages: [string, (b: Buffer) => Buffer][] = [
      ["first header", (b) => flip(b, 10)],
      ["inside the big body", (b) => flip(b, 5 * 1024 * 1024 + 17)],
      ["end marker", (b) => flip(b, b.length - 100)],
      ["truncated at a block boundary", (b) => b.subarray(0, 4 * 1024 * 1024)],
      ["truncated to nothing", () => Buffer.alloc(0)],
    ];
    for (const [what, damage] of damages) {
      await writeFile(objectPath(ref.id), damage(original));
      const err = await hydrateWorkspace(store, ref.id, join(root, "out"), { limits: LIMITS }).then(
        () => null,
        (e: unknown) => e as { code?: string; retryable?: boolean },
      );
      expect(err, what).not.toBeNull();
      expect([ErrorCodes.SNAPSHOT_STORE, ErrorCodes.TAR_CORRUPT, ErrorCodes.TAR_SIZE_MISMATCH], what).toContain(err!.code);
      expect(err!.retryable, what).toBe(false);
      expect((await readdir(root)).sort(), what).toEqual(["store", "ws"]);
    }
    // Damage that keeps the archive well-formed can only be caught by the hash.
    await writeFile(objectPath(ref.id), flip(original, 5 * 1024 * 1024 + 17));
    await expect(hydrateWorkspace(store, ref.id, join(root, "out"), { limits: LIMITS })).rejects.toMatchObject({ code: ErrorCodes.SNAPSHOT_STORE });
  }, 60_000);

  test("an abort mid-hydrate stops it, writes nothing and frees the fd", async () => {
    const ws = join(root, "ws");
    await makeWorkspace(ws);
    await writeFile(join(ws, "big2.bin"), randomBytes(24 * 1024 * 1024));
    const ref = await persistWorkspace(packDir(ws), store);
    const fds = openFds();
    const ac = new AbortController();
    const out = join(root, "out");
    const running = hydrateWorkspace(store, ref.id, out, { limits: LIMITS, signal: ac.signal });
    setTimeout(() => ac.abort(new Error("job cancelled")), 5);
    await expect(running).rejects.toThrow("job cancelled");
    await expect(stat(out)).rejects.toMatchObject({ code: "ENOENT" });
    expect((await readdir(root)).sort()).toEqual(["store", "ws"]);
    expect(openFds()).toBe(fds);
  }, 60_000);

  test("an object that shrank after it was opened fails instead of hydrating part of it", async () => {
    const ws = join(root, "ws");
    await makeWorkspace(ws);
    const ref = await persistWorkspace(packDir(ws), store);
    const tar = await store.get(ref.id);
    await truncate(objectPath(ref.id), 2 * 1024 * 1024);
    await expect(extractTar(join(root, "out"), tar, LIMITS)).rejects.toMatchObject({ retryable: false });
    expect((await readdir(root)).sort()).toEqual(["store", "ws"]);
  });
});

function flip(b: Buffer, at: number): Buffer {
  const out = Buffer.from(b);
  out[at] = out[at]! ^ 0x01;
  return out;
}
