import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { detectCgroups } from "../../providers/local/cgroups.js";

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function mountsFile(content: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "sandqueue-mounts-"));
  dirs.push(dir);
  const file = path.join(dir, "mounts");
  writeFileSync(file, content);
  return file;
}

describe("detectCgroups", () => {
  it("throws CGROUP_UNAVAILABLE, naming what is missing, when no hierarchy is mounted", () => {
    const file = mountsFile("proc /proc proc rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n");
    let err: unknown;
    try {
      detectCgroups({ parent: "sandqueue-unit", mountsFile: file });
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: "SANDQ_ERR_CGROUP_UNAVAILABLE", retryable: false });
    expect((err as Error).message).toMatch(/no cgroup2 mount/);
    expect((err as Error).message).toMatch(/no memory hierarchy mounted/);
  });

  it("refuses a parent that would leave the hierarchy", () => {
    for (const parent of ["../x", "/abs", ""]) {
      expect(() => detectCgroups({ parent })).toThrow(expect.objectContaining({ code: "SANDQ_ERR_CGROUP_UNAVAILABLE" }));
    }
  });
});
