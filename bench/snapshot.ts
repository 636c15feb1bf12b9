/**
 * Snapshot benchmark: persist (packDir -> file store, hashing on the hash
 * thread while streaming) and hydrate (store -> extractTar through the
 * block path: the hash thread reads and hashes the object while extractTar
 * parses and writes the same memory) of a 200 MiB workspace of mixed file
 * sizes, against `tar -c | sha256sum` and `tar -x` of the same tree in the
 * same run. Ratios are baseline time / our time (1.0 = as fast as GNU tar);
 * targets: persist >= 0.7, hydrate >= 0.7, peak RSS growth < 64 MiB. Also
 * printed: extractTar from a plain file stream (the path S3 objects and
 * engine archives take, without hashing) and the longest event-loop stall
 * during a hydrate.
 *
 * Run: `npx tsc -p tsconfig.json && node dist/bench/snapshot.js`
 * (SANDQUEUE_BENCH_MIB changes the workspace size, SANDQUEUE_BENCH_REPS the
 * repetitions; medians are reported; the work directory is under TMPDIR,
 * so TMPDIR=/dev/shm measures the CPU-bound tmpfs case).
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, rm, statfs, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { extractTar, packDir } from "../providers/archive/index.js";
import { FileSnapshotStore, hydrateWorkspace, persistWorkspace } from "../worker/snapshot/index.js";

const MiB = 1024 * 1024;
const REPS = Number(process.env.SANDQUEUE_BENCH_REPS ?? 5);

/** Mixed sizes: a few big files, many medium, lots of small, in nested dirs. */
async function makeWorkspace(dir: string, totalMiB: number): Promise<{ files: number; bytes: number }> {
  const scale = totalMiB / 200;
  const plan: [count: number, size: number][] = [
    [1, 64 * MiB],
    [4, 16 * MiB],
    [256, 256 * 1024],
    [2048, 4 * 1024],
  ].map(([c, s]) => [Math.max(1, Math.round(c! * scale)), s!]);
  let files = 0;
  let bytes = 0;
  for (const [count, size] of plan) {
    for (let i = 0; i < count; i++) {
      const sub = join(dir, `d${size}`, `g${i % 16}`);
      await mkdir(sub, { recursive: true });
      await writeFile(join(sub, `f${i}.bin`), randomBytes(size));
      files++;
      bytes += size;
    }
  }
  return { files, bytes };
}

function sh(cmd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn("sh", ["-c", cmd], { stdio: ["ignore", "ignore", "inherit"] });
    p.on("error", reject);
    p.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} exited ${code}`))));
  });
}

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Time of fn in ms and the peak RSS growth seen while it ran (sampled every 5 ms). */
async function measure(fn: () => Promise<unknown>): Promise<{ ms: number; rssGrowth: number }> {
  const base = process.memoryUsage.rss();
  let peak = base;
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage.rss());
  }, 5);
  const t0 = performance.now();
  try {
    await fn();
  } finally {
    clearInterval(timer);
  }
  const ms = performance.now() - t0;
  peak = Math.max(peak, process.memoryUsage.rss());
  return { ms, rssGrowth: peak - base };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function runSnapshotBench(): Promise<void> {
  const totalMiB = Number(process.env.SANDQUEUE_BENCH_MIB ?? 200);
  const root = await mkdtemp(join(tmpdir(), "sq-snapbench-"));
  try {
    const src = join(root, "src");
    const made = await makeWorkspace(src, totalMiB);
    const store = new FileSnapshotStore(join(root, "store"));
    const storeNoSync = new FileSnapshotStore(join(root, "store-nosync"), { fsync: false });
    const limits = { maxBytes: 64 * 1024 * MiB, maxEntries: 1_000_000, maxDepth: 64 };
    const tarFile = join(root, "baseline.tar");
    await sh(`tar -cf ${q(tarFile)} -C ${q(src)} .`); // also warms the page cache

    const base = { persist: [] as number[], hydrate: [] as number[] };
    const ours = { persist: [] as number[], hydrate: [] as number[], packOnly: [] as number[], persistNoSync: [] as number[], fromStream: [] as number[] };
    let rss = 0;
    let stallMs = 0;
    let id = "";
    for (let rep = 0; rep < REPS; rep++) {
      // Untimed `sync` before each persist: the previous round's extractions
      // and removals leave writeback and journal work behind on this
      // filesystem, which a durable put's fsync would otherwise pay for (the
      // baseline writes nothing). In a worker, sandbox workspaces live on a
      // tmpfs, not on the store's filesystem.
      await sh("sync");
      base.persist.push((await measure(() => sh(`tar -cf - -C ${q(src)} . | sha256sum`))).ms);
      await sh("sync");
      const p = await measure(async () => (id = (await persistWorkspace(packDir(src), store)).id));
      ours.persist.push(p.ms);
      rss = Math.max(rss, p.rssGrowth);
      await sh("sync");
      const pn = await measure(() => persistWorkspace(packDir(src), storeNoSync));
      ours.persistNoSync.push(pn.ms);
      rss = Math.max(rss, pn.rssGrowth);
      const po = await measure(async () => {
        for await (const _ of packDir(src)) void _;
      });
      ours.packOnly.push(po.ms);

      const bx = join(root, `bx${rep}`);
      await mkdir(bx);
      base.hydrate.push((await measure(() => sh(`tar -xf ${q(tarFile)} -C ${q(bx)}`))).ms);
      const ox = join(root, `ox${rep}`);
      const loop = monitorEventLoopDelay({ resolution: 1 });
      loop.enable();
      const h = await measure(() => hydrateWorkspace(store, id, ox, { limits }));
      loop.disable();
      stallMs = Math.max(stallMs, loop.max / 1e6);
      ours.hydrate.push(h.ms);
      rss = Math.max(rss, h.rssGrowth);
      await rm(bx, { recursive: true, force: true });
      await rm(ox, { recursive: true, force: true });
      const sx = join(root, `sx${rep}`);
      ours.fromStream.push((await measure(() => extractTar(sx, createReadStream(tarFile, { highWaterMark: MiB }), limits))).ms);
      await rm(sx, { recursive: true, force: true });
    }

    const mibps = (ms: number) => ((made.bytes / MiB) / (ms / 1000)).toFixed(0);
    const row = (name: string, baseMs: number, ourMs: number, target: number) => {
      const ratio = baseMs / ourMs;
      return `${name.padEnd(9)} baseline ${baseMs.toFixed(0).padStart(6)} ms (${mibps(baseMs)} MiB/s)  sandqueue ${ourMs.toFixed(0).padStart(6)} ms (${mibps(ourMs)} MiB/s)  ratio ${ratio.toFixed(3)}x  target >= ${target}x  ${ratio >= target ? "OK" : "BELOW TARGET"}`;
    };
    const fs = await statfs(root);
    const fsName = fs.type === 0x01021994 ? "tmpfs" : fs.type === 0xef53 ? "ext4" : `fs type 0x${fs.type.toString(16)}`;
    console.log(`snapshot bench: ${made.files} files, ${(made.bytes / MiB).toFixed(0)} MiB, median of ${REPS}, in ${root} (${fsName})`);
    console.log(row("persist", median(base.persist), median(ours.persist), 0.7) + "   [tar -c | sha256sum  vs  packDir -> file store (hash thread, write, fdatasync every 32 MiB + fsync, rename)]");
    console.log(row("  no fsync", median(base.persist), median(ours.persistNoSync), 0.7) + "   [same, file store with fsync=false]");
    console.log(`          (packDir alone, no store: ${median(ours.packOnly).toFixed(0)} ms, ${mibps(median(ours.packOnly))} MiB/s, ratio ${(median(base.persist) / median(ours.packOnly)).toFixed(2)}x)`);
    console.log(row("hydrate", median(base.hydrate), median(ours.hydrate), 0.7) + "   [tar -x  vs  store get -> extractTar block path (hash thread reads + sha256-verifies the object; main thread parses, validates, writes into staging, moves)]");
    console.log(`          (extractTar from a plain file stream, no hash: ${median(ours.fromStream).toFixed(0)} ms, ratio ${(median(base.hydrate) / median(ours.fromStream)).toFixed(2)}x; longest event-loop stall during a hydrate ${stallMs.toFixed(1)} ms)`);
    console.log(`peak RSS growth ${(rss / MiB).toFixed(1)} MiB (target < 64 MiB) ${rss < 64 * MiB ? "OK" : "ABOVE TARGET"}  [includes starting the hash thread in the first persist]`);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runSnapshotBench().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
