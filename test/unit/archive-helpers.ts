/** Helpers for the archive tests: hand-made tars and tree listings. */
import { createHash } from "node:crypto";
import { constants as fsc } from "node:fs";
import { lstat, mkdir, mkdtemp, open, readdir, readFile, readlink, rm, rmdir, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import tarStream from "tar-stream";

export type RawEntry = Parameters<ReturnType<typeof tarStream.pack>["entry"]>[0] & { body?: string | Buffer };

/** Builds a tar in memory from raw headers: whatever a hostile archive may contain. */
export async function rawTar(entries: RawEntry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  })();
  for (const { body, ...h } of entries) {
    await new Promise<void>((res, rej) => {
      const cb = (err?: Error | null) => (err ? rej(err) : res());
      if (body !== undefined) pack.entry({ mtime: new Date(0), ...h }, body, cb);
      else {
        const s = pack.entry({ mtime: new Date(0), ...h }, cb);
        (s as unknown as { end(): void }).end();
      }
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export function streamOf(buf: Buffer, chunkSize = 700): Readable {
  // Odd-sized chunks: headers and bodies straddle chunk boundaries.
  return Readable.from((function* () {
    for (let i = 0; i < buf.length; i += chunkSize) yield buf.subarray(i, i + chunkSize);
  })());
}

export async function collect(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export function sha(buf: Buffer): string {
  return createHash("sha256").update(buf).digest("hex");
}

export async function tempDir(prefix = "sq-archive-"): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

/** "path kind detail" lines for every entry below `dir`, sorted. */
export async function listTree(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for (const name of (await readdir(join(dir, rel))).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(dir, r));
    if (st.isSymbolicLink()) out.push(`${r} -> ${await readlink(join(dir, r))}`);
    else if (st.isDirectory()) {
      out.push(`${r}/ ${(st.mode & 0o7777).toString(8)}`);
      out.push(...(await listTree(dir, r)));
    } else out.push(`${r} ${(st.mode & 0o7777).toString(8)} ${sha(await readFile(join(dir, r))).slice(0, 12)}`);
  }
  return out;
}

export const LIMITS = { maxBytes: 64 * 1024 * 1024, maxEntries: 1000, maxDepth: 16 };

/** Rewrites the typeflag of the header block at `offset` and fixes its checksum (tar-stream will not write such headers). */
export function setTypeflag(tar: Buffer, offset: number, flag: string): Buffer {
  const out = Buffer.from(tar);
  out[offset + 156] = flag.charCodeAt(0);
  out.fill(0x20, offset + 148, offset + 156);
  let sum = 0;
  for (let i = offset; i < offset + 512; i++) sum += out[i]!;
  out.write(`${sum.toString(8).padStart(6, "0")}\0 `, offset + 148, "latin1");
  return out;
}

/**
 * Removes a tree of any depth: every path is taken below an fd of its
 * parent (/proc/self/fd/N/name), so none reaches PATH_MAX (fs.rm fails
 * with ENAMETOOLONG on such trees).
 */
export async function removeDeep(path: string): Promise<void> {
  const st = await lstat(path).catch(() => null);
  if (st === null) return;
  if (!st.isDirectory()) return unlink(path);
  const dir = await open(path, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  try {
    for (const name of await readdir(`/proc/self/fd/${dir.fd}`)) await removeDeep(`/proc/self/fd/${dir.fd}/${name}`);
  } finally {
    await dir.close();
  }
  await rmdir(path);
}

/** Creates `count` nested directories named `segment` below `dir` (beyond PATH_MAX if need be); returns the relative path. */
export async function makeDeep(dir: string, segment: string, count: number): Promise<string> {
  let fh = await open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    for (let i = 0; i < count; i++) {
      await mkdir(`/proc/self/fd/${fh.fd}/${segment}`);
      const next = await open(`/proc/self/fd/${fh.fd}/${segment}`, fsc.O_RDONLY | fsc.O_DIRECTORY);
      await fh.close();
      fh = next;
    }
  } finally {
    await fh.close();
  }
  return Array.from({ length: count }, () => segment).join("/");
}
