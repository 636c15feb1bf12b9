/**
 * Snapshot store contract, run against the file store and the S3 store (a
 * real S3-compatible server, s3rver, on a random port in a temp directory).
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pathToFileURL } from "node:url";
import { ListObjectsV2Command, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "vitest";
import { ErrorCodes } from "../../errors/index.js";
import { packDir } from "../../providers/archive/index.js";
import { hydrateWorkspace, openSnapshotStore, persistWorkspace, type SnapshotStore } from "../../worker/snapshot/index.js";
import { startPartCopyProxy } from "../support/s3-part-copy-proxy.js";

interface S3rverInstance {
  run(): Promise<{ port: number }>;
  close(): Promise<void>;
}
const S3rver = createRequire(import.meta.url)("s3rver") as new (opts: Record<string, unknown>) => S3rverInstance;

const CREDS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };
let s3dir: string;
let s3server: S3rverInstance;
let endpoint: string;

beforeAll(async () => {
  s3dir = await mkdtemp(join(tmpdir(), "sq-s3rver-"));
  s3server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: s3dir, configureBuckets: [{ name: "snaps" }] });
  const { port } = await s3server.run();
  endpoint = `http://127.0.0.1:${port}`;
});
afterAll(async () => {
  await s3server?.close();
  await rm(s3dir, { recursive: true, force: true });
});

const sha = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function collect(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** A stream that yields `parts` then fails: a worker dying mid-upload. */
function failingStream(parts: Buffer[]): Readable {
  return Readable.from(
    (async function* () {
      for (const p of parts) yield p;
      await new Promise((r) => setTimeout(r, 20));
      throw new Error("source broke");
    })(),
  );
}

interface Kind {
  name: string;
  open(): Promise<{ store: SnapshotStore; tempNames(): Promise<string[]> }>;
}

let counter = 0;
const kinds: Kind[] = [
  {
    name: "file",
    async open() {
      const root = await mkdtemp(join(tmpdir(), "sq-snaps-"));
      const store = openSnapshotStore(pathToFileURL(root).href);
      return { store, tempNames: async () => readdir(join(root, "tmp")).catch(() => []) };
    },
  },
  {
    name: "s3",
    async open() {
      const prefix = `run-${process.pid}-${++counter}/snapshots`;
      const s3 = { endpoint, credentials: CREDS, region: "us-east-1", env: {} };
      const store = openSnapshotStore(`s3://snaps/${prefix}`, { s3 });
      const client = new S3Client({ endpoint, credentials: CREDS, region: "us-east-1", forcePathStyle: true });
      return {
        store,
        async tempNames() {
          const r = await client.send(new ListObjectsV2Command({ Bucket: "snaps", Prefix: `${prefix}/tmp/` }));
          return (r.Contents ?? []).map((o) => o.Key!);
        },
      };
    },
  },
];

describe.each(kinds)("$name snapshot store", (kind) => {
  let store: SnapshotStore;
  let tempNames: () => Promise<string[]>;
  let work: string;

  beforeEach(async () => {
    ({ store, tempNames } = await kind.open());
    work = await mkdtemp(join(tmpdir(), "sq-snapwork-"));
  });
  afterEach(async () => {
    await store.close();
    await store.close(); // idempotent
    await rm(work, { recursive: true, force: true });
  });

  test("put/get round trip; the id is the sha256 of the bytes; identical content stored once", async () => {
    const data = randomBytes(300_000);
    const a = await store.put(Readable.from([data.subarray(0, 1000), data.subarray(1000)]));
    expect(a).toEqual({ id: sha(data), bytes: data.length });
    const b = await store.put(Readable.from([data]));
    expect(b.id).toBe(a.id);
    expect(await store.has(a.id)).toBe(true);
    expect(await collect(await store.get(a.id))).toEqual(data);
    const all = await store.list();
    expect(all).toHaveLength(1);
    expect(all[0]).toMatchObject({ id: a.id, bytes: data.length });
    expect(all[0]!.createdAt).toBeInstanceOf(Date);
    expect(await tempNames()).toEqual([]);
  });

  test("a multi-part sized snapshot", async () => {
    const data = randomBytes(20 * 1024 * 1024 + 123);
    const put = await store.put(Readable.from([data]));
    expect(put.id).toBe(sha(data));
    expect(sha(await collect(await store.get(put.id)))).toBe(put.id);
  }, 60_000);

  test("missing and malformed ids are SNAPSHOT_NOT_FOUND", async () => {
    const missing = `sha256:${"0".repeat(64)}`;
    await expect(store.get(missing)).rejects.toMatchObject({ code: ErrorCodes.SNAPSHOT_NOT_FOUND, retryable: false });
    await expect(store.get("sha256:../../etc/passwd")).rejects.toMatchObject({ code: ErrorCodes.SNAPSHOT_NOT_FOUND });
    expect(await store.has(missing)).toBe(false);
    expect(await store.remove(missing)).toBe(false);
  });

  test("a put whose source fails leaves nothing visible and no temp data", async () => {
    await expect(store.put(failingStream([randomBytes(9 * 1024 * 1024), randomBytes(1000)]))).rejects.toThrow("source broke");
    await expect(store.put(failingStream([Buffer.from("small")]))).rejects.toThrow("source broke");
    expect(await store.list()).toEqual([]);
    expect(await tempNames()).toEqual([]);
  }, 60_000);

  test("readers never see a snapshot before its put completes", async () => {
    const data = randomBytes(64 * 1024);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow = Readable.from(
      (async function* () {
        yield data.subarray(0, 1000);
        await gate;
        yield data.subarray(1000);
      })(),
    );
    const putting = store.put(slow);
    await new Promise((r) => setTimeout(r, 100));
    expect(await store.list()).toEqual([]);
    expect(await store.has(sha(data))).toBe(false);
    release();
    expect((await putting).id).toBe(sha(data));
    expect(await store.has(sha(data))).toBe(true);
  });

  test("remove and prune", async () => {
    const a = await store.put(Readable.from([Buffer.from("a")]));
    const b = await store.put(Readable.from([Buffer.from("b")]));
    expect(await store.remove(a.id)).toBe(true);
    expect(await store.remove(a.id)).toBe(false);
    expect(await store.prune(3_600_000)).toBe(0);
    await new Promise((r) => setTimeout(r, 1100)); // S3 LastModified has one-second resolution
    expect(await store.prune(500)).toBe(1);
    expect(await store.has(b.id)).toBe(false);
    expect(await store.list()).toEqual([]);
  });

  test("a workspace over its limit fails with WORKSPACE_LIMIT through the store, and nothing is stored", async () => {
    const ws = join(work, "ws");
    await mkdir(ws, { recursive: true });
    await writeFile(join(ws, "a.bin"), randomBytes(10 * 1024 * 1024));
    await writeFile(join(ws, "b.bin"), randomBytes(1024));
    await expect(persistWorkspace(packDir(ws, { maxBytes: 10 * 1024 * 1024 }), store)).rejects.toMatchObject({
      code: ErrorCodes.WORKSPACE_LIMIT,
    });
    expect(await store.list()).toEqual([]);
    expect(await tempNames()).toEqual([]);
  }, 60_000);

  test("persistWorkspace / hydrateWorkspace round trip a real workspace", async () => {
    const ws = join(work, "ws");
    await mkdir(join(ws, "src"), { recursive: true });
    await writeFile(join(ws, "src/main.py"), "print('hi')\n");
    await writeFile(join(ws, "data.bin"), randomBytes(100_000));
    const ref = await persistWorkspace(packDir(ws), store);
    expect(ref).toMatchObject({ files: 2 });
    expect(ref.id).toMatch(/^sha256:[0-9a-f]{64}$/);
    // Same content packed again: same id (deterministic tar).
    expect((await persistWorkspace(packDir(ws), store)).id).toBe(ref.id);
    const out = join(work, "out");
    const limits = { maxBytes: 1 << 30, maxEntries: 1000, maxDepth: 32 };
    expect(await hydrateWorkspace(store, ref.id, out, { limits })).toEqual({ files: 2, bytes: 100_000 + 12 });
    // Through a callback (a sandbox's putArchive): validated stream.
    const viaCallback = await hydrateWorkspace(store, ref.id, async (tar) => void (await collect(tar)), { limits });
    expect(viaCallback.files).toBe(2);
    // A plain tar (no stats attached) is validated and counted on the way in.
    const plain = Readable.from([await collect(await store.get(ref.id))]);
    expect(await persistWorkspace(plain, store)).toEqual(ref);
  });
});

describe("file store integrity", () => {
  test("a corrupted object fails the read instead of returning wrong bytes", async () => {
    const root = await mkdtemp(join(tmpdir(), "sq-snaps-"));
    try {
      const store = openSnapshotStore(pathToFileURL(root).href);
      const put = await store.put(Readable.from([Buffer.from("original content")]));
      await writeFile(join(root, "sha256", `${put.id.slice(7)}.tar`), "tampered content");
      await expect(collect(await store.get(put.id))).rejects.toMatchObject({ code: ErrorCodes.SNAPSHOT_STORE });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test("a damaged object (same size, one byte flipped) fails a hydrate and leaves no target", async () => {
    const root = await mkdtemp(join(tmpdir(), "sq-snaps-"));
    try {
      const ws = join(root, "ws");
      await mkdir(join(ws, "sub"), { recursive: true });
      await writeFile(join(ws, "sub", "big.bin"), randomBytes(6 * 1024 * 1024));
      await writeFile(join(ws, "small.txt"), "hello");
      const store = openSnapshotStore(pathToFileURL(join(root, "store")).href);
      const ref = await persistWorkspace(packDir(ws), store);
      const object = join(root, "store", "sha256", `${ref.id.slice(7)}.tar`);
      const bytes = await readFile(object);
      const at = bytes.length - 4096; // inside the last file's body: the tar still parses
      bytes.writeUInt8(bytes.readUInt8(at) ^ 1, at);
      await writeFile(object, bytes);
      const limits = { maxBytes: 1 << 30, maxEntries: 1000, maxDepth: 32 };
      await expect(hydrateWorkspace(store, ref.id, join(root, "out"), { limits })).rejects.toMatchObject({ code: ErrorCodes.SNAPSHOT_STORE, retryable: false });
      expect(await readdir(root)).toEqual(["store", "ws"].sort()); // no target, no staging directory left
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test("puts and gets running at once (and abandoned reads) keep their hashes apart", async () => {
    const root = await mkdtemp(join(tmpdir(), "sq-snaps-"));
    try {
      const store = openSnapshotStore(pathToFileURL(root).href);
      // Chunks of odd sizes: the ring wraps in the middle of chunks, blocks straddle chunks.
      const datas = [0, 1, 2].map((i) => randomBytes(9 * 1024 * 1024 + 777 * i));
      const chunked = (d: Buffer) => Readable.from(Array.from({ length: Math.ceil(d.length / 300_001) }, (_, k) => d.subarray(k * 300_001, (k + 1) * 300_001)));
      const puts = await Promise.all(datas.map((d) => store.put(chunked(d))));
      expect(puts.map((p) => p.id)).toEqual(datas.map(sha));
      // A reader that stops early: its hash is dropped and must not disturb the others.
      const early = await store.get(puts[0]!.id);
      for await (const _ of early) break;
      const got = await Promise.all(puts.map(async (p) => sha(await collect(await store.get(p.id)))));
      expect(got).toEqual(datas.map(sha));
      expect(await readdir(join(root, "tmp"))).toEqual([]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }, 60_000);

  test("an aborted put leaves no temp data", async () => {
    const root = await mkdtemp(join(tmpdir(), "sq-snaps-"));
    try {
      const store = openSnapshotStore(pathToFileURL(root).href);
      const ac = new AbortController();
      const slow = Readable.from(
        (async function* () {
          yield randomBytes(3 * 1024 * 1024);
          ac.abort();
          await new Promise((r) => setTimeout(r, 50));
          yield randomBytes(1024);
        })(),
      );
      await expect(store.put(slow, { signal: ac.signal })).rejects.toMatchObject({ name: "AbortError" });
      expect(await readdir(join(root, "tmp"))).toEqual([]);
      expect(await store.list()).toEqual([]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test("bad store URLs are CONFIG_INVALID", () => {
    expect(() => openSnapshotStore("ftp://x/y")).toThrow(expect.objectContaining({ code: ErrorCodes.CONFIG_INVALID }));
    expect(() => openSnapshotStore("not a url")).toThrow(expect.objectContaining({ code: ErrorCodes.CONFIG_INVALID }));
    expect(() => openSnapshotStore("s3://snaps/x", { s3: { env: {}, copy: { maxSingleCopyBytes: 1024, partBytes: 0 } } })).toThrow(
      expect.objectContaining({ code: ErrorCodes.CONFIG_INVALID, message: "S3 store copy.partBytes must be a positive integer of bytes (got 0)" }),
    );
  });
});

describe("s3 store integrity", () => {
  // S3 copies at most 5 GiB in one CopyObject; a larger snapshot is copied
  // from its temp key into place part by part. Here with the limit lowered
  // to 1 MiB and 5 MiB parts, through a proxy adding UploadPartCopy to s3rver.
  const MiB = 1024 * 1024;
  const partCopyStore = (proxyEndpoint: string, prefix: string) =>
    openSnapshotStore(`s3://snaps/${prefix}`, {
      s3: { endpoint: proxyEndpoint, credentials: CREDS, region: "us-east-1", env: {}, copy: { maxSingleCopyBytes: MiB, partBytes: 5 * MiB } },
    });
  const keysUnder = async (prefix: string) => {
    const client = new S3Client({ endpoint, credentials: CREDS, region: "us-east-1", forcePathStyle: true });
    const r = await client.send(new ListObjectsV2Command({ Bucket: "snaps", Prefix: `${prefix}/` }));
    client.destroy();
    return (r.Contents ?? []).map((o) => o.Key!.slice(prefix.length + 1));
  };

  test("a snapshot above the single-copy limit is copied into place part by part, byte for byte", async () => {
    const proxy = await startPartCopyProxy(endpoint, CREDS);
    const prefix = `run-${process.pid}-partcopy/snapshots`;
    const store = partCopyStore(proxy.endpoint, prefix);
    try {
      const data = randomBytes(12 * MiB + 77);
      const put = await store.put(Readable.from([data]));
      expect(put).toEqual({ id: sha(data), bytes: data.length });
      expect(proxy.copies.map((c) => [c.partNumber, c.range])).toEqual([
        [1, `bytes=0-${5 * MiB - 1}`],
        [2, `bytes=${5 * MiB}-${10 * MiB - 1}`],
        [3, `bytes=${10 * MiB}-${data.length - 1}`],
      ]);
      // Copied from the upload's temp object, which is gone afterwards.
      for (const c of proxy.copies) expect(c.source).toMatch(new RegExp(`^snaps/${prefix}/tmp/`));
      expect(await keysUnder(prefix)).toEqual([`sha256/${put.id.slice(7)}.tar`]);
      // Compared by digest: a deep equality of two 12 MiB buffers takes vitest minutes.
      expect(sha(await collect(await store.get(put.id)))).toBe(sha(data));
    } finally {
      await store.close();
      await proxy.close();
    }
  }, 60_000);

  test("a part copy that fails leaves no snapshot and no temp object", async () => {
    const proxy = await startPartCopyProxy(endpoint, CREDS);
    proxy.failPart = 2;
    const prefix = `run-${process.pid}-partcopy-fail/snapshots`;
    const store = partCopyStore(proxy.endpoint, prefix);
    try {
      await expect(store.put(Readable.from([randomBytes(12 * MiB)]))).rejects.toMatchObject({ code: ErrorCodes.SNAPSHOT_STORE });
      // Part 2 fails every time (the SDK retries a 500 itself); part 3 is never asked for.
      const parts = proxy.copies.map((c) => c.partNumber);
      expect(parts[0]).toBe(1);
      expect(parts.slice(1).length).toBeGreaterThanOrEqual(1);
      expect(new Set(parts.slice(1))).toEqual(new Set([2]));
      expect(await store.list()).toEqual([]);
      expect(await keysUnder(prefix)).toEqual([]);
    } finally {
      await store.close();
      await proxy.close();
    }
  }, 60_000);

  test("an object tampered with in the bucket fails the read instead of returning wrong bytes", async () => {
    const prefix = `run-${process.pid}-tamper/snapshots`;
    const store = openSnapshotStore(`s3://snaps/${prefix}`, { s3: { endpoint, credentials: CREDS, region: "us-east-1", env: {} } });
    const content = Buffer.from("original content");
    const put = await store.put(Readable.from([content]));
    expect(put.id).toBe(sha(content));
    const client = new S3Client({ endpoint, credentials: CREDS, region: "us-east-1", forcePathStyle: true });
    await client.send(new PutObjectCommand({ Bucket: "snaps", Key: `${prefix}/sha256/${put.id.slice(7)}.tar`, Body: "tampered content" }));
    await expect(collect(await store.get(put.id))).rejects.toMatchObject({ code: ErrorCodes.SNAPSHOT_STORE });
  });
});
