/**
 * The queue UI as an operator sees it: headless Chromium (Debian's package,
 * driven by playwright-core, a fresh profile) loads /ui with a `--ui` key;
 * the completed list must name a failed and a timed-out job as such, not
 * "Completed", and no secret value may be anywhere on the page. A
 * screenshot is kept under test-artifacts/ (gitignored).
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { chromium, type BrowserContext } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerRuntime } from "../../worker/runtime.js";
import { api, startTestApi, type TestApi } from "../support/api-harness.js";
import { requireCommand, startTestWorker, tempDir, uniqueQueue } from "../support/harness.js";

requireCommand("chromium", "chromium");
requireCommand("bwrap", "bubblewrap");
const ARTIFACTS = join(import.meta.dirname, "../../test-artifacts");
const SECRET_VALUE = `hunter2-${randomBytes(6).toString("hex")}`;

describe("queue UI in headless Chromium", () => {
  const queue = uniqueQueue("ui");
  let worker: WorkerRuntime;
  let t: TestApi;
  let uiKey: string;
  let browser: BrowserContext | undefined;

  beforeAll(async () => {
    // The worker resolves secrets from its environment; the value must never reach Redis or the page.
    process.env.SANDQUEUE_SECRET_UI_TOKEN = SECRET_VALUE;
    worker = await startTestWorker(queue, { concurrency: 2 });
    t = await startTestApi(queue);
    uiKey = await t.key("operator", { ui: true });
    const token = await t.key("svc");
    const specs = [
      { kind: "shell", script: "echo fine" },
      { kind: "shell", script: "echo broken >&2; exit 3" },
      { kind: "shell", script: "sleep 10", limits: { timeoutMs: 300 } },
      { kind: "shell", script: "yes sandqueue", limits: { maxOutputBytes: 2000 } },
      { kind: "shell", script: "true", image: "no-such-image" },
      { kind: "shell", script: 'echo "token=$UI_TOKEN"', secrets: ["UI_TOKEN"] },
    ];
    const { json } = await api(t.url, token, "POST", "/v1/jobs", { jobs: specs });
    for (const id of json.ids) await api(t.url, token, "GET", `/v1/jobs/${id}?wait=20s`);
  });

  afterAll(async () => {
    await browser?.close();
    delete process.env.SANDQUEUE_SECRET_UI_TOKEN;
    await t?.server.close();
    await worker?.close(1000);
  });

  it("asks for a key (Basic, so a browser prompts), and refuses keys without --ui", async () => {
    const none = await api(t.url, null, "GET", "/ui");
    expect([none.status, none.json.code]).toEqual([401, "SANDQ_ERR_UNAUTHORIZED"]);
    expect(none.headers.get("www-authenticate")).toMatch(/^Basic realm=/);
    const plain = await t.key("no-ui");
    expect((await api(t.url, plain, "GET", "/ui")).status).toBe(403);
    const basic = await fetch(`${t.url}/ui`, { headers: { authorization: `Basic ${Buffer.from(`any:${uiKey}`).toString("base64")}` } });
    expect(basic.status).toBe(200);
  });

  it("shows a failed and a timed-out job by their sandqueue status, and no secret value", async () => {
    browser = await chromium.launchPersistentContext(tempDir("chromium-profile"), {
      executablePath: "/usr/bin/chromium",
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      extraHTTPHeaders: { authorization: `Bearer ${uiKey}` },
      viewport: { width: 1400, height: 2400 },
    });
    const page = await browser.newPage();
    const res = await page.goto(`${t.url}/ui/queue/${encodeURIComponent(queue)}?status=completed`);
    expect(res?.status()).toBe(200);
    await page.getByText("✗ timed_out", { exact: false }).first().waitFor({ timeout: 20_000 });
    const text = await page.locator("body").innerText();
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "queue-ui.png"), fullPage: true });

    expect(text).toContain("✗ failed (exit 3) · shell · by svc");
    expect(text).toContain("✗ timed_out · shell · by svc");
    expect(text).toContain("✗ killed/output · shell · by svc");
    expect(text).toContain("✗ error/SANDQ_ERR_IMAGE_NOT_FOUND · shell · by svc");
    expect(text.match(/✓ succeeded · shell · by svc/g)).toHaveLength(2);
    expect(text).toContain(`${queue}.webhooks`);
    const html = await page.content();
    expect(html).not.toContain(SECRET_VALUE);
    expect(text).not.toContain(SECRET_VALUE);
  });
});
