import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { pathToFileURL } from "node:url";
import { afterEach, beforeEach, expect, test } from "vitest";
import { snapshotCommand } from "../../cli/snapshot-command.js";
import { openSnapshotStore } from "../../worker/snapshot/index.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sq-cli-"));
});
afterEach(async () => rm(dir, { recursive: true, force: true }));

async function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = "";
  let err = "";
  stdout.on("data", (c: Buffer) => (out += c.toString()));
  stderr.on("data", (c: Buffer) => (err += c.toString()));
  const code = await snapshotCommand(args, env, { stdout, stderr, cwd: dir });
  return { code, out, err };
}

test("default store under cwd: ls, get --out, rm, prune", async () => {
  const store = openSnapshotStore(pathToFileURL(join(dir, ".sandqueue", "snapshots")).href);
  const { id } = await store.put(Readable.from([Buffer.from("tar bytes")]));

  const ls = await run(["ls"]);
  expect(ls.code).toBe(0);
  expect(ls.out).toContain(id);
  const json = await run(["ls", "--json"]);
  expect(JSON.parse(json.out)).toEqual([expect.objectContaining({ id, bytes: 9 })]);

  expect((await run(["get", id, "--out", "x.tar"])).code).toBe(0);
  expect(await readFile(join(dir, "x.tar"), "utf8")).toBe("tar bytes");

  expect((await run(["prune", "--older-than", "7d"])).out).toContain("removed 0");
  expect((await run(["rm", id])).code).toBe(0);
  const again = await run(["rm", id]);
  expect(again.code).toBe(1);
  expect(again.err).toContain("SANDQ_ERR_SNAPSHOT_NOT_FOUND");
});

test("SANDQUEUE_SNAPSHOTS selects the store; errors and usage have distinct exit codes", async () => {
  const url = pathToFileURL(join(dir, "elsewhere")).href;
  const store = openSnapshotStore(url);
  const { id } = await store.put(Readable.from([Buffer.from("x")]));
  expect((await run(["ls"], { SANDQUEUE_SNAPSHOTS: url })).out).toContain(id);
  const missing = await run(["get", `sha256:${"1".repeat(64)}`, "--out", "y.tar"], { SANDQUEUE_SNAPSHOTS: url });
  expect(missing.code).toBe(1);
  expect(missing.err).toContain("SANDQ_ERR_SNAPSHOT_NOT_FOUND");
  expect((await run(["get", "nope", "--out", "y.tar"])).code).toBe(2);
  expect((await run(["prune", "--older-than", "soon"])).code).toBe(2);
  expect((await run(["frobnicate"])).code).toBe(2);
  expect((await run([])).code).toBe(2);
});
