/**
 * A provider test file's stand-in, its sandboxes real LocalProvider
 * (bubblewrap) sandboxes under a temp dir: started before the file's tests,
 * and after them stopped with its cgroups and files removed.
 */
import { mkdtemp, readdir, rm, rmdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll } from "vitest";
import { LocalProvider } from "../../providers/local/index.js";
import { requireCommand } from "./harness.js";

/**
 * Registers the file's beforeAll/afterAll. `start` builds the stand-in on
 * the local provider it is given (keep the result in a file variable);
 * `closeFirst` runs before the stand-in stops (the providers the file made).
 */
export function localStandinForFile(tag: string, start: (local: LocalProvider) => Promise<{ stop(): Promise<void> }>, closeFirst?: () => Promise<unknown>): void {
  let tmp: string | undefined;
  let local: LocalProvider | undefined;
  let standin: { stop(): Promise<void> } | undefined;
  beforeAll(async () => {
    requireCommand("bwrap", "bubblewrap");
    tmp = await mkdtemp(path.join(os.tmpdir(), `sandqueue-${tag}-`));
    local = new LocalProvider({ workRoot: path.join(tmp, "work"), cgroupParent: `sandqueue-${tag}-${process.pid}` });
    standin = await start(local);
  });
  afterAll(async () => {
    await closeFirst?.();
    await standin?.stop();
    await local?.close();
    for (const dir of local?.cgroupParentDirs ?? []) await rmdir(dir).catch(() => undefined);
    if (!tmp) return;
    // What is left says which sandbox outlived the close (its tmpfs then stays mounted: EBUSY).
    const left = await readdir(path.join(tmp, "work"), { recursive: true }).catch(() => []);
    await rm(tmp, { recursive: true, force: true }).catch((err: Error) => {
      throw new Error(`${err.message}; left in the work root: ${left.slice(0, 10).join(", ")}`);
    });
  });
}
