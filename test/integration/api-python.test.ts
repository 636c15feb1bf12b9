/**
 * The stdlib-only Python client (clients/python/sandqueue.py) run by a real
 * python3 against a real `sandqueue api` and worker: run, enqueue/wait,
 * batches, errors with field paths, cancel, events, snapshots, a wait that
 * times out, and a webhook receiver in Python verifying the signature.
 */
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deriveWebhookKey, formatWebhookSecret } from "../../api/webhook-signature.js";
import { loadMasterSecret } from "../../api/master-secret.js";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { startTestApi, type TestApi } from "../support/api-harness.js";
import { requireCommand, startTestWorker, tempDir, uniqueQueue } from "../support/harness.js";

requireCommand("python3", "python3-minimal");
requireCommand("bwrap", "bubblewrap");
const run = promisify(execFile);
const CLIENT_DIR = join(import.meta.dirname, "../../clients/python");

const SCRIPT = String.raw`
import hashlib, http.server, json, os, sys, threading, time
sys.path.insert(0, os.environ["CLIENT_DIR"])
from sandqueue import Client, SandqueueError, WebhookVerificationError, verify_webhook

sq = Client(os.environ["API_URL"], os.environ["API_KEY"])
out = {}

out["run"] = sq.run({"kind": "python", "code": "print(6*7)"}, timeout=30)

ids = sq.enqueue_many([{"kind": "shell", "script": "echo %d" % i} for i in range(3)])
out["batch"] = [sq.wait(i, timeout=30)["stdout"] for i in ids]

try:
    sq.enqueue_many([{"kind": "shell", "script": "true"}, {"kind": "shell", "script": "true", "limits": {"memoryMb": 1}}])
except SandqueueError as e:
    out["invalid"] = {"code": e.code, "status": e.status, "errors": e.errors}

try:
    Client(os.environ["API_URL"], "sq_000000000000_" + "A" * 32).get("x")
except SandqueueError as e:
    out["unauthorized"] = {"code": e.code, "status": e.status}

a = sq.enqueue({"kind": "shell", "script": "echo idem"}, idempotency_key="py-1")
out["idempotent"] = a == sq.enqueue({"kind": "shell", "script": "echo idem"}, idempotency_key="py-1")

slow = sq.enqueue({"kind": "shell", "script": "sleep 30"})
for _ in range(200):
    if sq.get(slow)["state"] == "running":
        break
    time.sleep(0.05)
out["cancelled"] = sq.cancel(slow)
r = sq.wait(slow, timeout=15)
out["cancel_result"] = [r["status"], r["reason"]]

t0 = time.monotonic()
try:
    sq.wait(sq.enqueue({"kind": "shell", "script": "sleep 3"}), timeout=0.5)
except SandqueueError as e:
    out["wait_timeout"] = {"code": e.code, "seconds": round(time.monotonic() - t0, 2)}

ev = sq.enqueue({"kind": "shell", "script": "sleep 0.3; echo evented"})
out["events"] = [[name, data.get("state")] for name, data in sq.events(ev)]

snap = sq.run({"kind": "shell", "script": "echo kept > kept.txt", "workspace": {"persist": True}}, timeout=30)["snapshot"]["id"]
path = os.path.join(os.environ["TMP"], "snap.tar")
sq.snapshot(snap, path)
out["snapshot_ok"] = "sha256:" + hashlib.sha256(open(path, "rb").read()).hexdigest() == snap

# A webhook receiver, as a Python service would write one.
received = []
secret = os.environ["WEBHOOK_SECRET"]
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            payload = verify_webhook(secret, self.headers, body)
            received.append(payload)
            try:
                verify_webhook(secret, self.headers, body.replace(b"hook", b"hack"))
                received.append("tampered body accepted")
            except WebhookVerificationError:
                pass
            self.send_response(204)
        except WebhookVerificationError as e:
            received.append("rejected: %s" % e)
            self.send_response(400)
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=srv.serve_forever, daemon=True).start()
hooked = sq.enqueue({"kind": "shell", "script": "echo hook", "callbackUrl": "http://127.0.0.1:%d/hook" % srv.server_address[1]})
deadline = time.monotonic() + 20
while not received and time.monotonic() < deadline:
    time.sleep(0.05)
out["webhook"] = received
out["hooked"] = hooked
srv.shutdown()
print(json.dumps(out))
`;

describe("the Python client against a real sandqueue api", () => {
  const queue = uniqueQueue("py");
  let worker: WorkerRuntime;
  let t: TestApi;
  const dir = tempDir("py-client");

  beforeAll(async () => {
    worker = await startTestWorker(queue, { concurrency: 2, snapshotsUrl: `file://${dir}/snapshots` });
    t = await startTestApi(queue, { callbackAllow: ["loopback"], snapshotsUrl: `file://${dir}/snapshots` });
  });

  afterAll(async () => {
    await t?.server.close();
    await worker?.close(1000);
  });

  it("runs jobs, reports errors, cancels, streams, downloads, and verifies webhooks", async () => {
    const token = await t.key("py-svc", { callbacks: true, maxMemoryMb: 512 });
    const key = await t.server.keys.get("py-svc");
    const secret = formatWebhookSecret(deriveWebhookKey(loadMasterSecret(t.config), key!.id, key!.webhookVersion));
    writeFileSync(join(dir, "client_test.py"), SCRIPT);
    const { stdout } = await run("python3", [join(dir, "client_test.py")], {
      env: { ...process.env, CLIENT_DIR, API_URL: t.url, API_KEY: token, WEBHOOK_SECRET: secret, TMP: dir },
      timeout: 90_000,
    });
    const out = JSON.parse(stdout);
    expect(out.run).toMatchObject({ status: "succeeded", exitCode: 0, stdout: "42\n" });
    expect(out.batch).toEqual(["0\n", "1\n", "2\n"]);
    expect(out.invalid).toEqual({
      code: "SANDQ_ERR_SPEC_INVALID",
      status: 422,
      errors: [{ path: "jobs[1].limits.memoryMb", message: "expected an integer from 8 to 1048576 MiB (got 1)" }],
    });
    expect(out.unauthorized).toEqual({ code: "SANDQ_ERR_UNAUTHORIZED", status: 401 });
    expect(out.idempotent).toBe(true);
    expect(out.cancelled).toBe(true);
    expect(out.cancel_result).toEqual(["killed", "cancelled"]);
    expect(out.wait_timeout.code).toBe("SANDQ_ERR_RESULT_TIMEOUT");
    expect(out.wait_timeout.seconds).toBeLessThan(2);
    expect(out.events.at(-1)).toEqual(["result", "finished"]);
    expect(out.events.map((e: string[]) => e[0])).toContain("state");
    expect(out.snapshot_ok).toBe(true);
    expect(out.webhook).toHaveLength(1);
    expect(out.webhook[0]).toMatchObject({ type: "job.finished", data: { id: out.hooked, state: "finished", result: { status: "succeeded", stdout: "hook\n" } } });
  });
});
