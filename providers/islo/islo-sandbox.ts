/**
 * One islo sandbox. Exec is islo's REST + polling (`POST /exec`, then
 * `GET /exec/{id}` until a terminal status), under the shared supervision:
 * wall time, output caps and aborts are enforced here, on the worker, from
 * the output polled so far. islo has no call to kill one exec, so a kill
 * stops the sandbox and resumes it (every process ends, the disk stays);
 * if that fails the sandbox is deleted and later calls fail as lost.
 */
import path from "node:path";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { createGunzip, gzip } from "node:zlib";
import { promisify } from "node:util";
import type { ExecLimitHit, ExecRequest, ExecResult, Sandbox } from "../provider.js";
import { WORKSPACE_DIR } from "../provider.js";
import { ErrorCodes, ProviderError, SnapshotError } from "../../errors/index.js";
import { ExecSupervision, notRunResult } from "../exec-supervision.js";
import { destroyOnAbort, guardPut, throwIfTransferAborted } from "../abort.js";
import { normalizeTar, readValidatedTar, type ArchiveLimits, type PackOptions } from "../archive/index.js";
import { workspaceSegments } from "../local/workspace-path.js";
import { errorCode, type IsloApi, type IsloExecResult, type IsloSandbox as IsloSandboxBody } from "./api.js";

const gzipAsync = promisify(gzip);

/** Statuses of islo's exec result that end polling (the SDK's, plus those PR #3124 accepted). */
const TERMINAL = new Set(["completed", "failed", "timeout", "finished", "succeeded", "exited", "done"]);
/** Sandbox statuses islo uses for a sandbox that is gone or broken. */
export const BROKEN = new Set(["failed", "error", "deleted"]);
/** First poll delay, ms; doubles up to the configured poll interval (short jobs answer fast). */
const FIRST_POLL_MS = 10;

export interface IsloSandboxOptions {
  api: IsloApi;
  name: string;
  /** The job's own gateway profile (deleted after the sandbox), if one was made for it. */
  profileId: string | null;
  /** The job's policy is enforced by its gateway profile. */
  egressEnforced: boolean;
  pollMs: number;
  /** Longest wait for a resumed sandbox to run again, ms. */
  readyTimeoutMs: number;
  archiveLimits: ArchiveLimits;
  /** Called once release is over; `leftOver` when the service could not be told to delete (retried by the provider's next reap). */
  onReleased: (leftOver: boolean) => void;
}

export class IsloSandbox implements Sandbox {
  readonly id: string;
  readonly egressEnforced: boolean;
  private releasing: Promise<void> | null = null;
  private lost: string | null = null;
  private readonly released = new AbortController();

  constructor(private readonly o: IsloSandboxOptions) {
    this.id = o.name;
    this.egressEnforced = o.egressEnforced;
  }

  private assertUsable(): void {
    if (this.releasing) throw new ProviderError(ErrorCodes.SANDBOX_RELEASED, `sandbox ${this.id} was released`, { retryable: false });
    if (this.lost) throw new ProviderError(ErrorCodes.SANDBOX_LOST, `islo sandbox ${this.id} is gone: ${this.lost}`, { retryable: true });
  }

  private lose(why: string): ProviderError {
    this.lost ??= why;
    return new ProviderError(ErrorCodes.SANDBOX_LOST, `islo sandbox ${this.id} is gone: ${why}`, { retryable: true });
  }

  async exec(req: ExecRequest): Promise<ExecResult> {
    this.assertUsable();
    if (req.stdin !== undefined) {
      throw new ProviderError(ErrorCodes.CAPABILITY_UNSUPPORTED, "stdin: islo's exec takes no input (capability stdin)", { retryable: false });
    }
    const startedAt = performance.now();
    if (req.signal?.aborted) return notRunResult(startedAt);
    const killer = new AbortController();
    let why: ExecLimitHit | null = null;
    const sup = new ExecSupervision(req, {
      kill: (w) => {
        why = w;
        killer.abort();
      },
      abortSignals: [this.released.signal],
    });
    try {
      const execId = await this.start(req, killer.signal);
      if (execId === null) return sup.result({ exitCode: null, signal: null });
      const seen = { stdout: 0, stderr: 0 };
      const take = (r: IsloExecResult): void => {
        for (const stream of ["stdout", "stderr"] as const) {
          const bytes = Buffer.from(r[stream] ?? "", "utf8");
          if (bytes.length > seen[stream]) {
            (stream === "stdout" ? sup.stdout : sup.stderr).push(bytes.subarray(seen[stream]));
            seen[stream] = bytes.length;
          }
        }
      };
      for (let delay = FIRST_POLL_MS; ; delay = Math.min(delay * 2, this.o.pollMs)) {
        const r = await this.poll(execId);
        take(r);
        if (TERMINAL.has(r.status)) {
          if (sup.killed) break;
          if (r.status === "timeout") sup.note("timeout");
          const code = typeof r.exit_code === "number" && r.exit_code >= 0 ? r.exit_code : null;
          if (code === null && r.status !== "timeout") {
            // Ended with no exit status and not by us: paused, stopped or deleted from outside.
            throw this.lose(`exec ${execId} ended ${r.status} without an exit status`);
          }
          return sup.result({ exitCode: code, signal: null });
        }
        if (sup.killed) break;
        await sleep(delay, undefined, { signal: killer.signal }).catch(() => undefined);
        if (sup.killed) {
          take(await this.poll(execId).catch(() => ({ stdout: "", stderr: "" }) as IsloExecResult));
          break;
        }
      }
      // Killed by us: the sandbox is being deleted (release), or we end every process in it.
      if (why !== "aborted" || !this.releasing) await this.killAll();
      return sup.result({ exitCode: null, signal: "SIGKILL" });
    } catch (err) {
      sup.stop();
      if (this.releasing && sup.killed) return sup.result({ exitCode: null, signal: "SIGKILL" });
      throw err;
    }
  }

  /** POST /exec; a paused or stopped sandbox is resumed once first. Null when aborted before it ran. */
  private async start(req: ExecRequest, killed: AbortSignal): Promise<string | null> {
    const body = {
      command: req.argv,
      env: req.env,
      workdir: req.cwd ?? WORKSPACE_DIR,
      timeout_secs: Math.max(1, Math.ceil(req.timeoutMs / 1000)),
    };
    for (let resumed = false; ; resumed = true) {
      if (killed.aborted) return null;
      const res = await this.o.api.call("compute", {
        method: "POST",
        path: `/sandboxes/${encodeURIComponent(this.id)}/exec`,
        json: body,
        accept: [400, 404, 409],
        // Running a command twice is not harmless: no retry once it may have been sent.
        idempotent: false,
        op: `exec in sandbox ${this.id}`,
      });
      if (res.status === 404) throw this.lose("not found (404)");
      if (res.status < 300) return res.json<{ exec_id: string }>().exec_id;
      if (errorCode(res) === "SANDBOX_INVALID_STATE" && !resumed) {
        await this.resumeIfHalted();
        continue;
      }
      throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `islo: exec in sandbox ${this.id}: HTTP ${res.status}: ${res.text().slice(0, 300)}`, { retryable: res.status === 409 });
    }
  }

  private async poll(execId: string): Promise<IsloExecResult> {
    const res = await this.o.api.call("compute", {
      method: "GET",
      path: `/sandboxes/${encodeURIComponent(this.id)}/exec/${encodeURIComponent(execId)}`,
      accept: [404],
      op: `poll exec ${execId} in sandbox ${this.id}`,
    });
    if (res.status === 404) {
      const gone = errorCode(res) === "SANDBOX_NOT_FOUND" || (await this.o.api.getSandbox(this.id)).status === 404;
      throw this.lose(gone ? "deleted while an exec ran" : `exec ${execId} is unknown to the service`);
    }
    return res.json<IsloExecResult>();
  }

  /** A paused or stopped sandbox runs again (resumed, never created anew); anything else is lost. */
  async resumeIfHalted(): Promise<void> {
    const res = await this.o.api.getSandbox(this.id);
    if (res.status === 404) throw this.lose("not found (404)");
    const sb = res.json<IsloSandboxBody>();
    if (sb.status === "paused" || sb.status === "stopped") {
      const r = await this.o.api.transition(this.id, "resume");
      if (r.status === 404) throw this.lose("not found (404)");
    } else if (BROKEN.has(sb.status)) {
      throw this.lose(`status ${sb.status}`);
    }
    await this.waitRunning();
  }

  async waitRunning(): Promise<void> {
    const until = Date.now() + this.o.readyTimeoutMs;
    for (let delay = FIRST_POLL_MS; ; delay = Math.min(delay * 2, this.o.pollMs)) {
      const res = await this.o.api.getSandbox(this.id);
      if (res.status === 404) throw this.lose("not found (404)");
      const status = res.json<IsloSandboxBody>().status;
      if (status === "running" || status === "started") return;
      if (BROKEN.has(status)) throw this.lose(`status ${status}`);
      if (Date.now() > until) {
        throw new ProviderError(ErrorCodes.PROVIDER_UNAVAILABLE, `islo sandbox ${this.id} still ${status} after ${this.o.readyTimeoutMs} ms`, { retryable: true });
      }
      await sleep(delay);
    }
  }

  /** Ends every process: stop then resume; deletes the sandbox when that does not work. */
  private async killAll(): Promise<void> {
    try {
      const stop = await this.o.api.transition(this.id, "stop");
      if (stop.status === 404) throw this.lose("not found (404)");
      const resume = await this.o.api.transition(this.id, "resume");
      if (resume.status === 404) throw this.lose("not found (404)");
      await this.waitRunning();
    } catch (err) {
      this.lost ??= `could not end a killed exec's processes: ${(err as Error).message}`;
      await this.o.api.deleteSandbox(this.id).catch(() => undefined);
    }
  }

  /** Normalised absolute path of `dir` (under /workspace), refused before any request when it escapes. */
  private async checkedDir(dir: string, create: boolean): Promise<string> {
    const abs = path.posix.join(WORKSPACE_DIR, ...workspaceSegments(dir));
    if (abs === WORKSPACE_DIR) return abs;
    // islo has no stat call: a small exec checks that no component is a symlink the job planted.
    const script = `${create ? 'mkdir -p -- "$1" 2>/dev/null; ' : ""}[ -d "$1" ] || exit 3; [ "$(readlink -f -- "$1")" = "$1" ] || exit 4`;
    const r = await this.exec({ argv: ["/bin/sh", "-c", script, "sh", abs], env: { PATH: "/usr/bin:/bin" }, timeoutMs: 30_000, maxOutputBytes: 4096 });
    if (r.exitCode === 4) throw new SnapshotError(ErrorCodes.TAR_THROUGH_SYMLINK, `sandbox path '${dir}' goes through a symlink; refused`);
    if (r.exitCode !== 0) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox path '${dir}' is not a directory`);
    return abs;
  }

  async putArchive(dir: string, tar: Readable, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const what = `islo sandbox ${this.id}: putArchive`;
    await guardPut(tar, what, opts.signal, async () => {
      this.assertUsable();
      const abs = await this.checkedDir(dir, true);
      throwIfTransferAborted(what, opts.signal);
      // Validated here, on the worker, as for every provider; then sent gzipped as islo's files-archive takes it.
      const gz = await gzipAsync(await readValidatedTar(tar, this.o.archiveLimits, what, opts.signal), { level: 1 });
      throwIfTransferAborted(what, opts.signal);
      const upload = () => {
        const form = new FormData();
        form.append("file", new Blob([gz], { type: "application/gzip" }), "archive.tar.gz");
        return this.o.api.call("compute", {
          method: "POST",
          path: `/sandboxes/${encodeURIComponent(this.id)}/files-archive`,
          query: { path: abs },
          body: form,
          accept: [400, 404],
          op: `upload archive to ${abs} in sandbox ${this.id}`,
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
      };
      let res = await upload();
      if (res.status === 400 && errorCode(res) === "SANDBOX_INVALID_STATE") {
        // islo paused or stopped it meanwhile: resumed (never recreated), then once more.
        await this.resumeIfHalted();
        res = await upload();
      }
      if (res.status === 404) throw this.lose("not found (404)");
      if (res.status === 400) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `${what}: ${res.text().slice(0, 300)}`, { retryable: false });
    });
  }

  async getArchive(dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
    const what = `islo sandbox ${this.id}: getArchive`;
    const { signal, ...packOpts } = opts;
    this.assertUsable();
    throwIfTransferAborted(what, signal);
    const abs = await this.checkedDir(dir, false);
    throwIfTransferAborted(what, signal);
    const download = () =>
      this.o.api.stream({
        method: "GET",
        path: `/sandboxes/${encodeURIComponent(this.id)}/files-archive`,
        query: { path: abs },
        accept: [400, 404],
        op: `download archive of ${abs} from sandbox ${this.id}`,
        ...(signal ? { signal } : {}),
      });
    const bodyText = async (r: Awaited<ReturnType<typeof download>>) => new Response(Readable.toWeb(r.body) as ReadableStream).text().catch(() => "");
    let res = await download();
    for (let resumed = false; res.status >= 400; resumed = true) {
      const text = await bodyText(res);
      if (res.status === 404 && /SANDBOX_NOT_FOUND/.test(text)) throw this.lose("not found (404)");
      if (resumed || !/SANDBOX_INVALID_STATE/.test(text)) {
        throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `${what}: HTTP ${res.status}: ${text.slice(0, 300)}`, { retryable: false });
      }
      await this.resumeIfHalted();
      res = await download();
    }
    // Filtered, limited and re-encoded here, exactly as the other providers' archives.
    const tar = destroyOnAbort(res.body, what, signal).pipe(createGunzip());
    res.body.on("error", (e) => tar.destroy(e));
    return destroyOnAbort(normalizeTar(tar, packOpts), what, signal);
  }

  release(): Promise<void> {
    this.releasing ??= (async () => {
      this.released.abort();
      let leftOver = true;
      try {
        await this.o.api.deleteSandbox(this.id);
        // After the sandbox: islo refuses to delete a profile a sandbox still uses.
        if (this.o.profileId) await this.o.api.deleteProfile(this.o.profileId);
        leftOver = false;
      } finally {
        this.o.onReleased(leftOver);
      }
    })();
    return this.releasing;
  }
}
