/**
 * The E2B stand-in (standins/e2b) checked with the client it did not write:
 * the official `e2b` SDK 2.51.0, unchanged, pointed at it by its own
 * options (`apiUrl` for the control plane, `sandboxUrl` for every
 * sandbox's envd). Every sandbox is a real bubblewrap sandbox. Needs root
 * and bubblewrap; fails, never skips, without them.
 */
import { describe, expect, it } from "vitest";
import { AuthenticationError, CommandExitError, FileNotFoundError, NotFoundError, RateLimitError, Sandbox, SandboxError, ServiceBusyError, TimeoutError } from "e2b";
import { E2bStandin } from "../../standins/e2b/index.js";
import { localStandinForFile } from "../support/local-standin.js";

let standin: E2bStandin;
let conn: { apiKey: string; apiUrl: string; sandboxUrl: string; debug: false };
localStandinForFile("e2b-standin", async (local) => {
  standin = await E2bStandin.start({ provider: local });
  conn = { apiKey: standin.apiKey, apiUrl: standin.controlUrl, sandboxUrl: standin.envdUrl, debug: false };
  return standin;
});

/** Every sandbox the SDK's list shows for a metadata query (all pages). */
async function listed(metadata: Record<string, string>, limit?: number): Promise<string[]> {
  const pages = Sandbox.list({ ...conn, query: { metadata }, ...(limit ? { limit } : {}) });
  const ids: string[] = [];
  while (pages.hasNext) ids.push(...(await pages.nextItems()).map((s) => s.sandboxId));
  return ids.sort();
}

describe("the e2b SDK against the stand-in", () => {
  it("creates from a template, runs commands (streamed, env, cwd, stdin), moves files, lists by metadata, kills", async () => {
    const sbx = await Sandbox.create("base", { ...conn, metadata: { "team/name": "sdk a&b=c" }, timeoutMs: 60_000 });
    const info = await sbx.getInfo();
    expect(info).toMatchObject({ sandboxId: sbx.sandboxId, templateId: "base", metadata: { "team/name": "sdk a&b=c" }, state: "running" });
    expect(info.endAt.getTime() - info.startedAt.getTime()).toBeGreaterThanOrEqual(59_000);

    const r = await sbx.commands.run("echo out; echo err >&2; pwd; echo $A", { cwd: "/tmp", envs: { A: "b c" } });
    expect(r).toMatchObject({ stdout: "out\n/tmp\nb c\n", stderr: "err\n", exitCode: 0 });
    const failed = await sbx.commands.run("echo no >&2; exit 3").catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(CommandExitError);
    expect(failed).toMatchObject({ exitCode: 3, stderr: "no\n" });

    const seen: string[] = [];
    const streamed = await sbx.commands.run("for i in 1 2 3; do echo line$i; sleep 0.1; done", { onStdout: (d) => void seen.push(d) });
    expect(streamed.stdout).toBe("line1\nline2\nline3\n");
    // Output arrived as it was written, not in one piece at the end.
    expect(seen.length).toBeGreaterThanOrEqual(3);

    const cat = await sbx.commands.run("wc -c; echo done", { background: true, stdin: true });
    await cat.sendStdin("hello ");
    await cat.sendStdin(new Uint8Array([0xff, 10]));
    await cat.closeStdin();
    expect((await cat.wait()).stdout).toBe("8\ndone\n");

    const bytes = Buffer.from([0, 1, 2, 255, 254, 10]);
    await sbx.files.write("/workspace/sub/dir/data.bin", new Blob([bytes]));
    expect(Buffer.from(await sbx.files.read("/workspace/sub/dir/data.bin", { format: "bytes" })).equals(bytes)).toBe(true);
    await sbx.files.write("/workspace/oct.bin", new Blob([bytes]), { useOctetStream: true });
    expect(Buffer.from(await sbx.files.read("/workspace/oct.bin", { format: "bytes" })).equals(bytes)).toBe(true);
    expect(await sbx.files.read("/workspace/sub/dir/data.bin")).toBe(bytes.toString());
    await expect(sbx.files.read("/workspace/missing")).rejects.toBeInstanceOf(FileNotFoundError);

    expect(await listed({ "team/name": "sdk a&b=c" })).toEqual([sbx.sandboxId]);
    expect(await listed({ "team/name": "sdk" })).toEqual([]);
    await sbx.setTimeout(120_000);
    expect((await sbx.getInfo()).endAt.getTime()).toBeGreaterThan(info.endAt.getTime());
    const again = await Sandbox.connect(sbx.sandboxId, conn);
    expect((await again.commands.run("cat /workspace/oct.bin | wc -c")).stdout).toBe("6\n");

    expect(await sbx.kill()).toBe(true);
    expect(await Sandbox.kill(sbx.sandboxId, conn)).toBe(false);
    await expect(Sandbox.getInfo(sbx.sandboxId, conn)).rejects.toBeInstanceOf(NotFoundError);
    expect(standin.sandboxList().find((s) => s.id === sbx.sandboxId)).toBeUndefined();
  });

  it("lists page by page (x-next-token)", async () => {
    const made = await Promise.all([1, 2, 3].map(() => Sandbox.create("base", { ...conn, metadata: { page: "yes" } })));
    expect(await listed({ page: "yes" }, 2)).toEqual(made.map((s) => s.sandboxId).sort());
    expect(standin.requests.filter((q) => q.op === "list").length).toBeGreaterThanOrEqual(2);
    await Promise.all(made.map((s) => s.kill()));
  });

  it("a background command survives its client going away; kill() (SendSignal SIGKILL) ends it and its children", async () => {
    const sbx = await Sandbox.create("base", conn);
    const h = await sbx.commands.run("sleep 30 & sleep 30; echo never", { background: true });
    await h.disconnect();
    await new Promise((r) => setTimeout(r, 200));
    expect(standin.sandboxList().find((s) => s.id === sbx.sandboxId)?.processes).toBe(1);
    expect(await h.kill()).toBe(true);
    await new Promise((r) => setTimeout(r, 200));
    expect(standin.sandboxList().find((s) => s.id === sbx.sandboxId)?.processes).toBe(0);
    expect(await sbx.commands.kill(h.pid)).toBe(false);
    // A command the SDK waits for and kills: wait() reports the kill as exit -1.
    const w = await sbx.commands.run("sleep 30", { background: true });
    setTimeout(() => void w.kill(), 200);
    await expect(w.wait()).rejects.toMatchObject({ exitCode: -1 });
    await sbx.kill();
  });

  it("maps the service's errors to the SDK's classes: 401 key, 404 template, 429 with Retry-After, 503, 5xx", async () => {
    const wrong = { ...conn, apiKey: "e2b_wrongwrongwrong" };
    await expect(Sandbox.list(wrong).nextItems()).rejects.toBeInstanceOf(AuthenticationError);
    await expect(Sandbox.create("base", wrong)).rejects.toBeInstanceOf(AuthenticationError);
    await expect(Sandbox.create("no-such-template", conn)).rejects.toMatchObject({ statusCode: 404 });

    // The SDK retries a 429 that carries Retry-After (POST included), waiting for it.
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 429, retryAfterSeconds: 1 } });
    const t0 = Date.now();
    const sbx = await Sandbox.create("base", conn);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 429 } });
    await expect(Sandbox.create("base", conn)).rejects.toBeInstanceOf(RateLimitError);
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 503 } });
    await expect(Sandbox.create("base", conn)).rejects.toBeInstanceOf(ServiceBusyError);
    standin.faults.add({ match: { op: "kill", sandbox: sbx.sandboxId }, action: { type: "fail", code: 500 } });
    await expect(sbx.kill()).rejects.toMatchObject({ statusCode: 500 });
    standin.faults.add({ match: { op: "process-start", sandbox: sbx.sandboxId }, action: { type: "fail", code: 401 } });
    await expect(sbx.commands.run("echo")).rejects.toBeInstanceOf(AuthenticationError);
    standin.faults.add({ match: { op: "files-read", sandbox: sbx.sandboxId }, action: { type: "fail", code: 502 } });
    await expect(sbx.files.read("/workspace/x")).rejects.toBeInstanceOf(TimeoutError);
    // A stale envd token is refused.
    const stale = await Sandbox.connect(sbx.sandboxId, conn);
    (stale as unknown as { envdAccessToken: string }).envdAccessToken = "not-the-token";
    await expect(stale.commands.run("echo no")).rejects.toBeInstanceOf(AuthenticationError);
    expect((await (await Sandbox.connect(sbx.sandboxId, conn)).commands.run("echo ok")).stdout).toBe("ok\n");
    await sbx.kill();
  });

  it("a sandbox killed under a running command: the stream drops and the SDK, probing envd's health, says it is gone", async () => {
    const sbx = await Sandbox.create("base", conn);
    standin.faults.add({ match: { op: "process-start", sandbox: sbx.sandboxId }, action: { type: "vanish", afterMs: 300 } });
    const err = await sbx.commands.run("echo started; sleep 20").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toMatch(/killed or reached its end of life/);
    expect(await sbx.isRunning()).toBe(false);
    await expect(sbx.commands.run("echo")).rejects.toBeInstanceOf(SandboxError);
  });

  it("the service kills a sandbox at the end of its timeout", async () => {
    const sbx = await Sandbox.create("base", { ...conn, timeoutMs: 1_000 });
    expect(await listed({})).toContain(sbx.sandboxId);
    await new Promise((r) => setTimeout(r, 1_500));
    expect(await listed({})).not.toContain(sbx.sandboxId);
  });

  it("faults can be set over HTTP (what `npm run standin` users have), bad ones refused naming the field", async () => {
    const admin = (p: string, body: unknown, key = conn.apiKey) =>
      fetch(`${conn.apiUrl}${p}`, { method: "POST", headers: { "X-API-Key": key, "Content-Type": "application/json" }, body: JSON.stringify(body) });
    expect((await admin("/standin/faults", { match: { op: "create" }, action: { type: "fail", code: 503 } }, "wrong")).status).toBe(401);
    const bad = await admin("/standin/faults", { match: { op: "nope" }, action: { type: "fail", code: 503 } });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { message: string }).message).toMatch(/^match\.op: /);
    const badCode = await admin("/standin/faults", { action: { type: "fail", code: 418 } });
    expect(((await badCode.json()) as { message: string }).message).toMatch(/^action\.code: /);
    expect((await admin("/standin/faults", { match: { op: "create" }, action: { type: "fail", code: 400 } })).status).toBe(201);
    await expect(Sandbox.create("base", conn)).rejects.toMatchObject({ statusCode: 400 });
  });

  it("envd refuses a missing or wrong token, and answers 502 for a sandbox it does not have (raw requests)", async () => {
    const sbx = await Sandbox.create("base", conn);
    const token = (sbx as unknown as { envdAccessToken: string }).envdAccessToken;
    const get = (headers: Record<string, string>) => fetch(`${conn.sandboxUrl}/files?path=/workspace`, { headers });
    const h = { "E2b-Sandbox-Id": sbx.sandboxId, "E2b-Sandbox-Port": "49983" };
    expect((await get({ ...h, "X-Access-Token": "nope" })).status).toBe(401);
    expect((await get(h)).status).toBe(401);
    expect((await get({ ...h, "X-Access-Token": token })).status).toBe(400); // a directory
    expect((await get({ "E2b-Sandbox-Id": "inope", "E2b-Sandbox-Port": "49983" })).status).toBe(502);
    await sbx.kill();
  });
});
