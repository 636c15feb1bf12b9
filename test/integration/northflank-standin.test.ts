/**
 * The Northflank stand-in (standins/northflank) checked with the client it
 * did not write: @northflank/js-client 0.9.5, unchanged, pointed at it by
 * its own context `host`: service create/get/list/containers/delete, secret
 * groups, the V1 exec WebSocket (execServiceCommand, execServiceSession with
 * stdin and base64 output), the SDK's file copy (tar over exec) both ways,
 * and the API's errors as the SDK reports them. Every instance is a real
 * bubblewrap sandbox. Needs root and bubblewrap; fails, never skips, without
 * them.
 */
import { mkdtemp, mkdir, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiClient, ApiClientInMemoryContextProvider, NorthflankApiCallError } from "@northflank/js-client";
import { LocalProvider } from "../../providers/local/index.js";
import { NorthflankStandin } from "../../standins/northflank/index.js";
import { requireCommand } from "../support/harness.js";

let tmp: string;
let provider: LocalProvider;
let standin: NorthflankStandin;
let api: ApiClient;
let project: { projectId: string };
const cgroupParent = `sandqueue-northflank-test-${process.pid}`;

function client(token: string): ApiClient {
  const contexts = new ApiClientInMemoryContextProvider();
  contexts.addContext({ name: "test", token, host: standin.url });
  return new ApiClient(contexts, { throwErrorOnHttpErrorCode: true });
}

beforeAll(async () => {
  requireCommand("bwrap", "bubblewrap");
  tmp = await mkdtemp(path.join(os.tmpdir(), "sandqueue-northflank-standin-"));
  provider = new LocalProvider({ workRoot: path.join(tmp, "work"), cgroupParent });
  standin = await NorthflankStandin.start({ provider, attach: [{ id: "existing", instances: 2 }] });
  api = client(standin.token);
  project = { projectId: standin.projectId };
});

afterAll(async () => {
  await standin?.stop();
  await provider?.close();
  for (const dir of provider?.cgroupParentDirs ?? []) await rmdir(dir).catch(() => undefined);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const createData = (name: string, imagePath = "python:3.12-slim") => ({
  name,
  description: "sdk check",
  tags: ["t1"],
  billing: { deploymentPlan: "nf-compute-20" },
  deployment: { instances: 1, external: { imagePath }, docker: { configType: "customCommand" as const, customCommand: "sleep infinity" } },
});

describe("@northflank/js-client against the stand-in", () => {
  it("creates a deployment service, lists it with its tags, shows its running container, deletes it", async () => {
    const created = await api.create.service.deployment({ parameters: project, data: createData("sdk-check") });
    expect(created.data).toMatchObject({ id: "sdk-check", name: "sdk-check", tags: ["t1"], billing: { deploymentPlan: "nf-compute-20" } });
    const got = await api.get.service({ parameters: { ...project, serviceId: "sdk-check" } });
    expect(got.data).toMatchObject({ id: "sdk-check", description: "sdk check", servicePaused: false, status: { deployment: { status: "COMPLETED" } } });
    const all = await api.list.services.all({ parameters: project });
    expect(all.data.services.map((s) => s.id).sort()).toEqual(["existing", "sdk-check"]);
    const containers = await api.get.service.containers({ parameters: { ...project, serviceId: "sdk-check" } });
    expect(containers.data.containers).toHaveLength(1);
    expect(containers.data.containers![0]).toMatchObject({ status: "TASK_RUNNING" });
    expect(containers.data.containers![0]!.name).toMatch(/^sdk-check-/);
    // The team-scoped form of the same route.
    const teamList = await api.list.services({ parameters: { teamId: "any-team", ...project } });
    expect(teamList.data.services.length).toBe(2);

    await api.delete.service({ parameters: { ...project, serviceId: "sdk-check" } });
    const after = await api.list.services({ parameters: project });
    expect(after.data.services.map((s) => s.id)).toEqual(["existing"]);
  });

  it("runs commands through the exec socket: argv with shell none, stdout and stderr apart, the exit code", async () => {
    const r = await api.exec.execServiceCommand({ ...project, serviceId: "existing" }, { command: ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], shell: "none" });
    expect(r.commandResult).toMatchObject({ exitCode: 3, status: "Failure" });
    expect(r.stdOut).toBe("out\n");
    expect(r.stdErr).toBe("err\n");
    // No shell: a quoted argument reaches the program as one word.
    const argv = await api.exec.execServiceCommand({ ...project, serviceId: "existing" }, { command: ["printf", "%s|", "a b", "$HOME"], shell: "none" });
    expect(argv.stdOut).toBe("a b|$HOME|");
    expect(argv.commandResult).toMatchObject({ exitCode: 0, status: "Success" });
  });

  it("an exec session with base64 encoding carries stdin and binary output byte for byte, on a named instance", async () => {
    const containers = await api.get.service.containers({ parameters: { ...project, serviceId: "existing" } });
    const instance = containers.data.containers![1]!.name;
    let seenInstance = "";
    const session = await api.exec.execServiceSession(
      { ...project, serviceId: "existing" },
      { command: ["/bin/sh", "-c", "cat; printf '\\000\\377\\n' >&2"], shell: "none", encoding: "base64", instanceName: instance },
      (info) => (seenInstance = info.instanceName),
    );
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    session.stdOut.on("data", (c: Buffer) => out.push(c));
    session.stdErr.on("data", (c: Buffer) => err.push(c));
    const bytes = Buffer.from([0, 1, 2, 200, 255, 10, 13]);
    session.stdIn.write(bytes.toString("base64"));
    session.stdIn.end();
    const result = await session.waitForCommandResult();
    expect(result).toMatchObject({ exitCode: 0, status: "Success" });
    expect(seenInstance).toBe(instance);
    expect(Buffer.concat(out)).toEqual(bytes);
    expect(Buffer.concat(err)).toEqual(Buffer.from([0, 255, 10]));
  });

  it("the SDK's file copy uploads and downloads a directory (tar over exec), and streams a file", async () => {
    const src = path.join(tmp, "up");
    await mkdir(path.join(src, "sub"), { recursive: true });
    await writeFile(path.join(src, "a.txt"), "alpha\n");
    await writeFile(path.join(src, "sub", "b.bin"), Buffer.from([0, 255, 1]));
    const svc = { ...project, serviceId: "existing" };
    const containers = await api.get.service.containers({ parameters: svc });
    const instanceName = containers.data.containers![0]!.name;
    await api.fileCopy.uploadServiceFiles(svc, { localPath: src, remotePath: "/workspace/copied", instanceName });
    const ls = await api.exec.execServiceCommand(svc, { command: ["find", "/workspace/copied", "-type", "f"], shell: "none", instanceName });
    expect(ls.stdOut.split("\n").filter(Boolean).sort()).toEqual(["/workspace/copied/a.txt", "/workspace/copied/sub/b.bin"]);

    const dst = path.join(tmp, "down");
    await api.fileCopy.downloadServiceFiles(svc, { localPath: dst, remotePath: "/workspace/copied", instanceName });
    // The SDK resolves on the command's result, before its own tar extractor has written the files (its race,
    // not the stand-in's): wait for them.
    for (let end = Date.now() + 5_000; !existsSync(path.join(dst, "sub", "b.bin")) && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20));
    expect(await readFile(path.join(dst, "a.txt"), "utf8")).toBe("alpha\n");
    expect(await readFile(path.join(dst, "sub", "b.bin"))).toEqual(Buffer.from([0, 255, 1]));

    await api.fileCopy.uploadServiceFileStream(svc, { source: Buffer.from("streamed\n"), remotePath: "/workspace/s.txt", instanceName });
    const { fileStream, completionPromise } = await api.fileCopy.downloadServiceFileStream(svc, { remotePath: "/workspace/s.txt", instanceName });
    const chunks: Buffer[] = [];
    fileStream.on("data", (c: Buffer) => chunks.push(c));
    expect(await completionPromise).toBe(true);
    expect(Buffer.concat(chunks).toString()).toBe("streamed\n");
    await api.exec.execServiceCommand(svc, { command: ["rm", "-rf", "/workspace/copied", "/workspace/s.txt"], shell: "none", instanceName });
  });

  it("secret groups: create, a second of the same name is 409, list, get, delete", async () => {
    const data = { name: "lease-check", description: '{"x":1}', secretType: "environment" as const, priority: 0, restrictions: { restricted: true, nfObjects: [] } };
    const made = await api.create.secret({ parameters: project, data });
    expect((made.data as { id?: string }).id).toBe("lease-check");
    await expect(api.create.secret({ parameters: project, data })).rejects.toMatchObject({ status: 409 });
    const list = await api.list.secrets.all({ parameters: project });
    expect(list.data.secrets.map((s) => s.name)).toEqual(["lease-check"]);
    expect((await api.get.secret({ parameters: { ...project, secretId: "lease-check" } })).data.description).toBe('{"x":1}');
    await api.delete.secret({ parameters: { ...project, secretId: "lease-check" } });
    await expect(api.get.secret({ parameters: { ...project, secretId: "lease-check" } })).rejects.toMatchObject({ status: 404 });
  });

  it("errors as the SDK reports them: a bad token (REST 401, exec init refused), 404, 409, injected 429/5xx, an unknown image", async () => {
    const bad = client("nf-wrong");
    const e401 = await bad.list.services({ parameters: project }).catch((e: unknown) => e);
    expect(e401).toBeInstanceOf(NorthflankApiCallError);
    expect(e401).toMatchObject({ status: 401 });
    await expect(bad.exec.execServiceCommand({ ...project, serviceId: "existing" }, { command: ["true"] })).rejects.toThrow(/Command initialization failed: Unauthorized/);

    await expect(api.get.service({ parameters: { ...project, serviceId: "nope" } })).rejects.toMatchObject({ status: 404 });
    await expect(api.create.service.deployment({ parameters: project, data: createData("existing") })).rejects.toMatchObject({ status: 409 });
    await expect(api.create.service.deployment({ parameters: project, data: { ...createData("bad"), billing: {} as never } })).rejects.toMatchObject({
      status: 400,
      message: expect.stringContaining("billing.deploymentPlan"),
    });

    standin.faults.add({ match: { op: "list-services" }, action: { type: "fail", code: 429 } });
    await expect(api.list.services({ parameters: project })).rejects.toMatchObject({ status: 429 });
    standin.faults.add({ match: { op: "exec", service: "existing" }, action: { type: "fail", code: 503 } });
    await expect(api.exec.execServiceCommand({ ...project, serviceId: "existing" }, { command: ["true"] })).rejects.toThrow(/Unexpected server response: 503/);
    expect(standin.faults.pending).toBe(0);

    // The platform's way with a bad image: the service exists, its deployment fails, no container runs.
    await api.create.service.deployment({ parameters: project, data: createData("no-image", "no/such:image") });
    const svc = await api.get.service({ parameters: { ...project, serviceId: "no-image" } });
    expect(svc.data.status.deployment?.status).toBe("FAILED");
    expect((await api.get.service.containers({ parameters: { ...project, serviceId: "no-image" } })).data.containers).toEqual([]);
    await api.delete.service({ parameters: { ...project, serviceId: "no-image" } });
  });

  it("an instance that goes away mid-command drops the socket: the SDK reports the connection lost", async () => {
    standin.faults.add({ match: { op: "exec", service: "sdk-vanish" }, action: { type: "vanish", afterMs: 300 } });
    await api.create.service.deployment({ parameters: project, data: createData("sdk-vanish") });
    const t0 = Date.now();
    await expect(api.exec.execServiceCommand({ ...project, serviceId: "sdk-vanish" }, { command: ["sleep", "30"] })).rejects.toThrow(/WebSocket closed unexpectedly|Connection closed/);
    expect(Date.now() - t0).toBeLessThan(5_000);
    const containers = await api.get.service.containers({ parameters: { ...project, serviceId: "sdk-vanish" } });
    expect(containers.data.containers![0]).toMatchObject({ status: "TASK_FAILED" });
    await api.delete.service({ parameters: { ...project, serviceId: "sdk-vanish" } });
  });
});
