/**
 * deer-flow's own provisioner client against the provisioner stand-in:
 * RemoteSandboxBackend from ../shared/seeds/001_*.txt (test/fixtures/deerflow,
 * the seed's code with its line breaks restored) on Debian's python3 and
 * requests, unchanged. It creates, waits for, discovers, re-creates and
 * destroys a sandbox; meanwhile the test runs a command in that sandbox
 * through the AIO API at the URL the client was given, so the sandbox is a
 * real one. This is the check that the stand-in follows the provisioner and
 * not only our provider's habits.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, rmdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, expect, it } from "vitest";
import { LocalProvider } from "../../providers/local/index.js";
import { ProvisionerStandin } from "../../standins/provisioner/index.js";

const FIXTURE = path.join(import.meta.dirname, "../fixtures/deerflow");
// Debian's interpreter: setup installs python3-requests for it.
const PYTHON = "/usr/bin/python3";

let tmp: string;
let local: LocalProvider;
let standin: ProvisionerStandin;

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "sandqueue-deerflow-test-"));
  local = new LocalProvider({ workRoot: tmp, cgroupParent: `sandqueue-test-deerflow-${process.pid}` });
  // deer-flow's client sends no credentials: the provisioner runs without a key, as in deer-flow's compose file.
  standin = await ProvisionerStandin.start({ provider: local, image: "host", memoryMb: 256, pids: 64, apiKey: null, sandboxApiKey: null });
});

afterAll(async () => {
  await standin?.stop();
  await local?.close();
  for (const dir of local?.cgroupParentDirs ?? []) await rmdir(dir).catch(() => undefined);
  await rm(tmp, { recursive: true, force: true });
});

it("the client is the seed's code: token for token, only line breaks and indentation restored", async () => {
  const seeds = path.join(import.meta.dirname, "../../../shared/seeds");
  const name = (await readdir(seeds)).find((f) => f.startsWith("001_"));
  expect(name, "../shared/seeds/001_*.txt (deer-flow's RemoteSandboxBackend)").toBeDefined();
  const seed = await readFile(path.join(seeds, name!), "utf8");
  const ours = await readFile(path.join(FIXTURE, "deerflow_sandbox/remote_backend.py"), "utf8");
  // From the imports on; our two comment lines saying where the file comes from are not the seed's.
  const code = (text: string): string => text.slice(text.indexOf("from __future__")).replace(/^# .*$/gm, "").replace(/\s+/g, "");
  expect(code(ours)).toBe(code(seed));
});

interface Seen {
  step: string;
  before: unknown;
  created: { sandbox_id: string; sandbox_url: string };
  alive: boolean;
  discovered: { sandbox_id: string; sandbox_url: string } | null;
  created_again: { sandbox_id: string; sandbox_url: string };
  after_destroy?: { discover: unknown; alive: boolean };
}

it("deer-flow's RemoteSandboxBackend creates, finds, reuses and destroys a real sandbox through the stand-in", async () => {
  const id = `df-${process.pid}`;
  const child = spawn(PYTHON, [path.join(FIXTURE, "drive_backend.py"), standin.url, id], {
    cwd: FIXTURE,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", PYTHONDONTWRITEBYTECODE: "1" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.on("exit", r));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async (): Promise<Seen> => {
    const { value, done } = await lines.next();
    if (done) throw new Error(`the client exited (${await exited}) before answering: ${stderr}`);
    return JSON.parse(value as string) as Seen;
  };

  const running = await next();
  expect(running.step).toBe("running");
  expect(running.before).toBeNull();
  expect(running.created.sandbox_id).toBe(id);
  expect(running.created.sandbox_url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  expect(running.alive).toBe(true);
  expect(running.discovered).toEqual(running.created);
  expect(running.created_again).toEqual(running.created);
  expect(standin.sandboxes()).toEqual([id]);

  // The URL the client got serves that sandbox: a command runs in it for real.
  const r = await fetch(`${running.created.sandbox_url}/v1/bash/exec`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ command: "echo $((6*7)); grep NoNewPrivs /proc/self/status; exit 3" }),
  });
  const body = (await r.json()) as { success: boolean; data: { stdout: string; exit_code: number } };
  expect(body.success).toBe(true);
  expect(body.data.exit_code).toBe(3);
  // no_new_privs: it runs under bubblewrap, not on the host.
  expect(body.data.stdout).toBe("42\nNoNewPrivs:\t1\n");

  child.stdin.write("\n");
  const done = await next();
  expect(await exited).toBe(0);
  expect(done.after_destroy).toEqual({ discover: null, alive: false });
  expect(standin.sandboxes()).toEqual([]);
});
