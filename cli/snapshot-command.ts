/**
 * `sandqueue snapshot get ID --out FILE.tar | ls [--json] | rm ID | prune --older-than 7d`
 *
 * The store URL comes from SANDQUEUE_SNAPSHOTS (file:///dir or
 * s3://bucket/prefix), default file://<cwd>/.sandqueue/snapshots.
 * Exit status: 0 ok, 1 failure (message names the error code), 2 usage.
 */
import { createWriteStream } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { pathToFileURL } from "node:url";
import type { Writable } from "node:stream";
import { isSandqueueError } from "../errors/index.js";
import { openSnapshotStore, parseDurationMs, SNAPSHOT_ID_RE } from "../worker/snapshot/index.js";

const USAGE = `usage: sandqueue snapshot <command>
  get ID --out FILE.tar     write a snapshot to FILE.tar ("-" for stdout)
  ls [--json]               list snapshots (id, bytes, created)
  rm ID                     remove a snapshot
  prune --older-than AGE    remove snapshots older than AGE (e.g. 7d, 12h, 30m)
store: SANDQUEUE_SNAPSHOTS=file:///dir | s3://bucket/prefix (default file://<cwd>/.sandqueue/snapshots)`;

export interface CommandIO {
  stdout: Writable;
  stderr: Writable;
  cwd: string;
}

function humanBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

export async function snapshotCommand(
  args: string[],
  env: Record<string, string | undefined>,
  io: CommandIO = { stdout: process.stdout, stderr: process.stderr, cwd: process.cwd() },
): Promise<number> {
  const say = (s: string) => io.stdout.write(`${s}\n`);
  const usage = (problem: string) => {
    io.stderr.write(`sandqueue snapshot: ${problem}\n${USAGE}\n`);
    return 2;
  };
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") {
    if (sub === undefined) return usage("missing command");
    say(USAGE);
    return 0;
  }
  const url = env.SANDQUEUE_SNAPSHOTS || pathToFileURL(join(io.cwd, ".sandqueue", "snapshots")).href;
  const flag = (name: string): string | undefined => {
    const i = rest.indexOf(name);
    if (i === -1) return undefined;
    const v = rest[i + 1];
    rest.splice(i, 2);
    return v ?? "";
  };
  const checkId = (id: string | undefined): string | null => (id !== undefined && SNAPSHOT_ID_RE.test(id) ? id : null);

  let store;
  try {
    store = openSnapshotStore(url, { s3: { env } });
  } catch (err) {
    io.stderr.write(`sandqueue snapshot: ${describe(err)}\n`);
    return 1;
  }
  try {
    switch (sub) {
      case "get": {
        const out = flag("--out");
        const id = checkId(rest[0]);
        if (!id || rest.length !== 1) return usage("get needs one snapshot id (sha256:<64 hex>)");
        if (!out) return usage("get needs --out FILE.tar (or --out - for stdout)");
        const tar = await store.get(id);
        if (out === "-") {
          await pipeline(tar, io.stdout, { end: false });
          return 0;
        }
        // Temp file + rename: a failed download (corrupt object, network) leaves no half file.
        const target = resolve(io.cwd, out);
        const tmp = `${target}.part-${process.pid}`;
        try {
          await pipeline(tar, createWriteStream(tmp, { flags: "wx" }));
          await rename(tmp, target);
        } catch (err) {
          await rm(tmp, { force: true });
          throw err;
        }
        io.stderr.write(`wrote ${id} to ${out}\n`);
        return 0;
      }
      case "ls": {
        const json = rest.includes("--json");
        const extra = rest.filter((a) => a !== "--json");
        if (extra.length) return usage(`ls takes no argument ${JSON.stringify(extra[0])}`);
        const all = await store.list();
        if (json) {
          say(JSON.stringify(all.map((s) => ({ id: s.id, bytes: s.bytes, createdAt: s.createdAt.toISOString() }))));
        } else {
          for (const s of all) say(`${s.id}  ${humanBytes(s.bytes).padStart(10)}  ${s.createdAt.toISOString()}`);
          io.stderr.write(`${all.length} snapshot(s)\n`);
        }
        return 0;
      }
      case "rm": {
        const id = checkId(rest[0]);
        if (!id || rest.length !== 1) return usage("rm needs one snapshot id (sha256:<64 hex>)");
        if (!(await store.remove(id))) {
          io.stderr.write(`sandqueue snapshot: SANDQ_ERR_SNAPSHOT_NOT_FOUND: snapshot ${id} not found\n`);
          return 1;
        }
        say(`removed ${id}`);
        return 0;
      }
      case "prune": {
        const age = flag("--older-than");
        if (age === undefined || rest.length) return usage("prune needs --older-than AGE (e.g. 7d)");
        const ms = parseDurationMs(age);
        if (ms === null) return usage(`--older-than ${JSON.stringify(age)}: expected a number with unit ms, s, m, h, d or w (e.g. 7d)`);
        const n = await store.prune(ms);
        say(`removed ${n} snapshot(s) older than ${age}`);
        return 0;
      }
      default:
        return usage(`unknown command ${JSON.stringify(sub)}`);
    }
  } catch (err) {
    io.stderr.write(`sandqueue snapshot: ${describe(err)}\n`);
    return 1;
  } finally {
    await store.close();
  }
}

function describe(err: unknown): string {
  if (isSandqueueError(err)) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}
