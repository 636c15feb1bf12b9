/**
 * The Superserve stand-in (standins/superserve) checked with the client it
 * did not write: @superserve/sdk 0.8.1, unchanged, pointed at it by its own
 * `baseUrl` option (its data-plane host routed to the stand-in's data port,
 * providers/superserve/data-plane-route.ts: the SDK has no option for it).
 * Every sandbox is a real bubblewrap sandbox. Needs root and bubblewrap;
 * fails, never skips, without them.
 */
import { describe, expect, it } from "vitest";
import { AuthenticationError, ConflictError, NotFoundError, RateLimitError, Sandbox, ServerError, ValidationError } from "@superserve/sdk";
import { SuperserveStandin } from "../../standins/superserve/index.js";
import { routeDataPlane, sdkDataPlaneOrigin } from "../../providers/superserve/data-plane-route.js";
import { localStandinForFile } from "../support/local-standin.js";

let standin: SuperserveStandin;
let conn: { apiKey: string; baseUrl: string };
localStandinForFile("superserve-standin", async (local) => {
  standin = await SuperserveStandin.start({ provider: local });
  conn = { apiKey: standin.apiKey, baseUrl: standin.controlUrl };
  routeDataPlane(sdkDataPlaneOrigin(conn.apiKey, conn.baseUrl), standin.dataUrl);
  return standin;
});

describe("@superserve/sdk against the stand-in", () => {
  it("creates from a template, runs commands (sync and streamed), moves files, lists by metadata, kills", async () => {
    const sbx = await Sandbox.create({ ...conn, name: "sdk-check", fromTemplate: "superserve/base", metadata: { team: "sdk" } });
    expect(sbx.status).toBe("active");
    expect(sbx.metadata).toEqual({ team: "sdk" });

    const r = await sbx.commands.run("echo out; echo err >&2; exit 3", { cwd: "/tmp", env: { A: "b" } });
    expect(r).toEqual({ stdout: "out\n", stderr: "err\n", exitCode: 3 });
    expect((await sbx.commands.run("pwd; echo $A", { cwd: "/tmp", env: { A: "b c" } })).stdout).toBe("/tmp\nb c\n");

    const seen: string[] = [];
    const streamed = await sbx.commands.run("for i in 1 2 3; do echo line$i; sleep 0.1; done; echo e >&2", {
      onStdout: (d) => seen.push(`o:${d}`),
      onStderr: (d) => seen.push(`e:${d}`),
    });
    expect(streamed).toEqual({ stdout: "line1\nline2\nline3\n", stderr: "e\n", exitCode: 0 });
    // Output arrived as it was written, not in one piece at the end.
    expect(seen.filter((s) => s.startsWith("o:")).length).toBeGreaterThanOrEqual(3);

    const bytes = Buffer.from([0, 1, 2, 255, 254, 10]);
    await sbx.files.write("/workspace/sub/dir/data.bin", bytes);
    expect(Buffer.from(await sbx.files.read("/workspace/sub/dir/data.bin")).equals(bytes)).toBe(true);
    expect(await sbx.files.readText("/workspace/sub/dir/data.bin")).toBe(bytes.toString());
    await expect(sbx.files.read("/workspace/missing")).rejects.toBeInstanceOf(NotFoundError);
    // The SDK refuses escapes itself; the stand-in refuses them too (checked below, raw).
    await expect(sbx.files.read("/workspace/../etc/passwd")).rejects.toBeInstanceOf(ValidationError);

    const listed = await Sandbox.list({ ...conn, metadata: { team: "sdk" } });
    expect(listed.map((s) => s.id)).toEqual([sbx.id]);
    expect(await Sandbox.list({ ...conn, metadata: { team: "other" } })).toEqual([]);
    await sbx.update({ metadata: { team: "sdk", extra: "1" } });
    expect((await sbx.getInfo()).metadata).toEqual({ team: "sdk", extra: "1" });

    await sbx.kill();
    await sbx.kill(); // idempotent
    await expect(sbx.getInfo()).rejects.toBeInstanceOf(NotFoundError);
    expect(standin.sandboxList().find((s) => s.id === sbx.id)).toBeUndefined();
  });

  it("pause, resume and connect rotate the access token; the old token is refused with 401", async () => {
    const sbx = await Sandbox.create({ ...conn, name: "sdk-pause" });
    await sbx.commands.run("echo kept > /workspace/f");
    await sbx.pause();
    await new Promise((r) => setTimeout(r, 100));
    expect((await sbx.getInfo()).status).toBe("paused");
    // A command on a paused sandbox: the SDK sees 401 (token revoked by pause), activates, retries once.
    const r = await sbx.commands.run("cat /workspace/f");
    expect(r.stdout).toBe("kept\n");
    expect((await sbx.getInfo()).status).toBe("active");
    const activations = standin.requests.filter((q) => q.sandbox === sbx.id && q.op === "activate").length;
    expect(activations).toBe(1);

    await sbx.pause();
    await new Promise((r) => setTimeout(r, 100));
    await sbx.resume();
    expect((await sbx.getInfo()).status).toBe("active");

    // Another client connects (activate): this instance's token is now stale, so its next call activates again.
    const other = await Sandbox.connect(sbx.id, conn);
    expect((await other.commands.run("echo via-connect")).stdout).toBe("via-connect\n");
    const before = standin.requests.filter((q) => q.sandbox === sbx.id && q.op === "activate").length;
    expect((await sbx.commands.run("echo again")).stdout).toBe("again\n");
    expect(standin.requests.filter((q) => q.sandbox === sbx.id && q.op === "activate").length).toBe(before + 1);
    const stale = standin.requests.filter((q) => q.sandbox === sbx.id && q.plane === "data" && q.status === 401);
    expect(stale.length).toBeGreaterThanOrEqual(2);
    await sbx.kill();
  });

  it("maps the service's errors to the SDK's classes: 401 key, 404, 409, 429 with Retry-After, 5xx", async () => {
    await expect(Sandbox.list({ apiKey: "ss_live_use_wrongwrongwrongwrongwrongwrongwron", baseUrl: conn.baseUrl })).rejects.toBeInstanceOf(AuthenticationError);
    await expect(Sandbox.connect("00000000-0000-0000-0000-000000000000", conn)).rejects.toBeInstanceOf(NotFoundError);
    await expect(Sandbox.create({ ...conn, name: "x", fromTemplate: "no/such-template" })).rejects.toBeInstanceOf(NotFoundError);

    const sbx = await Sandbox.create({ ...conn, name: "sdk-errors" });
    await sbx.pause();
    await expect(sbx.pause()).resolves.toBeUndefined();
    standin.faults.add({ match: { op: "pause", sandbox: sbx.id }, action: { type: "fail", code: 409 } });
    await expect(sbx.pause()).rejects.toBeInstanceOf(ConflictError);

    // GET is retried by the SDK: two 503s then the answer; 429 waits for Retry-After.
    standin.faults.add({ match: { op: "get", sandbox: sbx.id }, action: { type: "fail", code: 503 }, count: 2 });
    expect((await sbx.getInfo()).id).toBe(sbx.id);
    standin.faults.add({ match: { op: "get", sandbox: sbx.id }, action: { type: "fail", code: 429, retryAfterSeconds: 1 } });
    const t0 = Date.now();
    await sbx.getInfo();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    // POST is not retried by the SDK: the error class carries the status.
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 429, retryAfterSeconds: 2 } });
    await expect(Sandbox.create({ ...conn, name: "limited" })).rejects.toBeInstanceOf(RateLimitError);
    standin.faults.add({ match: { op: "create" }, action: { type: "fail", code: 500 } });
    await expect(Sandbox.create({ ...conn, name: "broken" })).rejects.toBeInstanceOf(ServerError);

    // 503 on the data plane: one activate, one retry; a second 503 reaches the caller.
    await sbx.resume();
    standin.faults.add({ match: { op: "exec", sandbox: sbx.id }, action: { type: "fail", code: 503 } });
    expect((await sbx.commands.run("echo ok")).stdout).toBe("ok\n");
    standin.faults.add({ match: { op: "exec", sandbox: sbx.id }, action: { type: "fail", code: 503 }, count: 2 });
    await expect(sbx.commands.run("echo no")).rejects.toBeInstanceOf(ServerError);
    await sbx.kill();
  });

  it("a sandbox deleted under a streamed command: the stream ends without finished, which the SDK reports", async () => {
    const sbx = await Sandbox.create({ ...conn, name: "sdk-vanish" });
    standin.faults.add({ match: { op: "exec-stream", sandbox: sbx.id }, action: { type: "vanish", afterMs: 300, status: "failed" } });
    await expect(sbx.commands.run("sleep 20", { onStdout: () => undefined })).rejects.toThrow(/without a finished event|Stream error|terminated/);
    expect((await sbx.getInfo()).status).toBe("failed");
    await sbx.kill();
  });

  it("faults and statuses can be set over HTTP (what `npm run standin` users have), bad ones refused naming the field", async () => {
    const admin = (p: string, body: unknown, key = conn.apiKey) =>
      fetch(`${conn.baseUrl}${p}`, { method: "POST", headers: { "X-API-Key": key, "Content-Type": "application/json" }, body: JSON.stringify(body) });
    expect((await admin("/standin/faults", { match: { op: "create" }, action: { type: "fail", code: 503 } }, "wrong")).status).toBe(401);
    const bad = await admin("/standin/faults", { match: { op: "nope" }, action: { type: "fail", code: 503 } });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { message: string } }).error.message).toMatch(/^match\.op: expected one of create, list/);
    const badCode = await admin("/standin/faults", { action: { type: "fail", code: 418 } });
    expect(((await badCode.json()) as { error: { message: string } }).error.message).toMatch(/^action\.code:/);
    expect((await admin("/standin/faults", { match: { op: "create" }, action: { type: "fail", code: 400 } })).status).toBe(201);
    await expect(Sandbox.create({ ...conn, name: "refused" })).rejects.toBeInstanceOf(ValidationError);
    const sbx = await Sandbox.create({ ...conn, name: "admin-status" });
    expect((await admin(`/standin/sandboxes/${sbx.id}/status`, { status: "sleeping" })).status).toBe(400);
    expect((await admin(`/standin/sandboxes/${sbx.id}/status`, { status: "paused" })).status).toBe(204);
    expect((await sbx.getInfo()).status).toBe("paused");
    await sbx.kill();
  });

  it("the data plane refuses bad paths, missing routing headers and bad tokens (raw requests)", async () => {
    const sbx = await Sandbox.create({ ...conn, name: "sdk-raw" });
    const token = (await (await fetch(`${conn.baseUrl}/sandboxes/${sbx.id}/activate`, { method: "POST", headers: { "X-API-Key": conn.apiKey } })).json()) as {
      access_token: string;
    };
    const get = (p: string, headers: Record<string, string>) => fetch(`${standin.dataUrl}/files?path=${encodeURIComponent(p)}`, { headers });
    const h = { "X-Superserve-Sandbox-Id": sbx.id, "X-Access-Token": token.access_token };
    expect((await get("/etc/../etc/passwd", h)).status).toBe(400);
    expect((await get("relative", h)).status).toBe(400);
    expect((await get("/workspace", { "X-Access-Token": token.access_token })).status).toBe(400);
    const bad = await get("/workspace", { ...h, "X-Access-Token": "nope" });
    expect(bad.status).toBe(401);
    expect(await bad.json()).toMatchObject({ error: { code: "invalid_token" } });
    await sbx.kill();
  });
});
