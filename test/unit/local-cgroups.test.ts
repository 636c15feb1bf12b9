import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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

/**
 * The v2 branch on a stand-in cgroupfs (plain directories and files): this
 * machine is hybrid v1, so only the sequence of our own writes and mkdirs is
 * checked here, not the kernel's answers to them.
 */
describe("cgroup v2 layout (stand-in cgroupfs)", () => {
  function fakeV2(): { root: string; mounts: string } {
    const root = mkdtempSync(path.join(os.tmpdir(), "sandqueue-cg2-"));
    dirs.push(root);
    for (const f of ["cgroup.controllers", "cgroup.subtree_control"]) writeFileSync(path.join(root, f), "memory pids\n");
    // prepareV2 creates the parent and checks what it offers: the stand-in offers both from the start.
    const parent = path.join(root, "sq-unit");
    mkdirSync(parent);
    for (const f of ["cgroup.controllers", "cgroup.subtree_control"]) writeFileSync(path.join(parent, f), "memory pids\n");
    return { root, mounts: mountsFile(`cgroup2 ${root} cgroup2 rw 0 0\n`) };
  }
  const read = (f: string) => readFileSync(f, "utf8");

  it("runs the first exec in the sandbox cgroup and later ones in leaves, lifting the sandbox's own limits first", async () => {
    const { root, mounts } = fakeV2();
    const m = detectCgroups({ parent: "sq-unit", mountsFile: mounts, version: 2 });
    expect(m.version).toBe(2);
    const sandbox = path.join(root, "sq-unit", "box");
    const cg = await m.create("box", { memoryBytes: 64 << 20, pids: 12 });
    // No controllers for children yet: a v2 cgroup with enabled subtree controllers may hold no process.
    expect(existsSync(path.join(sandbox, "cgroup.subtree_control"))).toBe(false);

    const first = await cg.newExec();
    expect(first.join.procs).toEqual([path.join(sandbox, "cgroup.procs")]);
    expect(first.join.oom).toBeUndefined();
    const writes = Object.fromEntries(first.join.limits.map((w) => [path.relative(root, w.file), w.value]));
    expect(writes).toEqual({
      "sq-unit/box/memory.max": String(64 << 20),
      "sq-unit/box/memory.swap.max": "0",
      "sq-unit/box/memory.oom.group": "1",
      "sq-unit/box/pids.max": "12",
    });
    for (const w of first.join.limits) writeFileSync(w.file, w.value); // what the spawn helper does
    await first.remove(); // the sandbox's own cgroup stays
    expect(existsSync(sandbox)).toBe(true);

    cg.setLimits({ memoryBytes: 32 << 20, pids: 6 });
    const second = await cg.newExec();
    expect(read(path.join(sandbox, "pids.max"))).toBe("max");
    expect(read(path.join(sandbox, "memory.max"))).toBe("max");
    expect(read(path.join(sandbox, "cgroup.subtree_control"))).toBe("+memory +pids");
    expect(existsSync(path.join(sandbox, "x2"))).toBe(true);
    expect(second.join.procs).toEqual([path.join(sandbox, "x2", "cgroup.procs")]);
    expect(second.join.limits.find((w) => w.file.endsWith("x2/pids.max"))?.value).toBe("6");
    expect(second.join.limits.find((w) => w.file.endsWith("x2/memory.max"))?.value).toBe(String(32 << 20));

    // A third exec gets its own leaf; the switch is not repeated.
    writeFileSync(path.join(sandbox, "pids.max"), "untouched");
    const third = await cg.newExec();
    expect(third.join.procs).toEqual([path.join(sandbox, "x3", "cgroup.procs")]);
    expect(read(path.join(sandbox, "pids.max"))).toBe("untouched");
  });
});
