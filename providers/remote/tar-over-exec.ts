/**
 * Workspace archives for services with no file API (microsandbox): the tar
 * crosses as base64 text, which survives any text transport, line
 * splitting included. The worker validates every archive exactly as for
 * the other providers: putArchive sends only what validateTar let through,
 * getArchive hands back normalizeTar of what came out.
 *
 * Up: chunks of base64 as command arguments appended to a file in /tmp
 * (each argument under Linux's 128 KiB MAX_ARG_STRLEN, each call under
 * ARG_MAX), then `base64 -d | tar -x`. Down: `tar -c | base64`. Both check
 * in the sandbox that the target is a real directory under /workspace
 * (`cd -P` and pwd agree: no planted symlink on the way). The image needs
 * sh, tar and base64 (coreutils).
 */
import { randomBytes } from "node:crypto";
import path from "node:path";
import { Readable } from "node:stream";
import { ErrorCodes, ProviderError, SnapshotError } from "../../errors/index.js";
import { destroyOnAbort, guardPut, rethrowAborted, throwIfTransferAborted } from "../abort.js";
import { normalizeTar, readValidatedTar, type ArchiveLimits, type PackOptions } from "../archive/index.js";
import { workspaceSegments } from "../local/workspace-path.js";
import { WORKSPACE_DIR } from "../provider.js";
import { shellQuote } from "../request-script.js";

export interface RawOutput {
  stdout: string;
  stderr: string;
  exitCode: number | null;
}

/** Runs argv (no shell, the sandbox's own env) and waits for its end. */
export type RawRun = (argv: string[], opts: { timeoutMs: number; signal?: AbortSignal }) => Promise<RawOutput>;

const CHUNK = 96 * 1024;
const CHUNKS_PER_CALL = 12;
const STEP_TIMEOUT_MS = 120_000;
const EXIT_MISSING = 98;
const EXIT_SYMLINK = 99;

/** The checked absolute path of `dir` (under /workspace); throws before any request otherwise. */
export function workspacePath(dir: string): string {
  return path.posix.join(WORKSPACE_DIR, ...workspaceSegments(dir));
}

/**
 * A fresh file in /workspace to stage an archive in (not /tmp: a service may
 * give each command its own /tmp): its name, and its path.
 */
export function stagedTar(kind: "put" | "get"): { name: string; path: string } {
  const name = `.sandqueue-${kind}-${randomBytes(8).toString("hex")}.tar`;
  return { name, path: `${WORKSPACE_DIR}/${name}` };
}

/** `/bin/sh -c script` with its positional arguments ($0 first) as one command line, for an exec that takes a string. */
export function shCommandLine(script: string, args: readonly string[]): string {
  return `/bin/sh -c ${shellQuote(script)} ${args.map(shellQuote).join(" ")}`;
}

/** Shell text: enters "$1" and exits 98 when it is missing, 99 when a symlink is on the way. */
export const CHECK_DIR = `cd -P -- "$1" 2>/dev/null || exit ${EXIT_MISSING}; [ "$(pwd -P)" = "$1" ] || exit ${EXIT_SYMLINK}`;

/** The error for a failed archive step (98/99 from CHECK_DIR named as such). */
export function stepFailed(what: string, dir: string, out: RawOutput): Error {
  if (out.exitCode === EXIT_SYMLINK) return new SnapshotError(ErrorCodes.TAR_THROUGH_SYMLINK, `sandbox path '${dir}' goes through a symlink; refused`);
  if (out.exitCode === EXIT_MISSING) return new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox path '${dir}' does not exist or is not a directory`);
  return new ProviderError(ErrorCodes.PROVIDER_FAILED, `${what} failed in the sandbox (exit ${out.exitCode}): ${out.stderr.trim().slice(0, 300)}`);
}

export async function putArchiveOverExec(run: RawRun, dir: string, tar: Readable, limits: ArchiveLimits, signal?: AbortSignal): Promise<void> {
  const what = "putArchive";
  await guardPut(tar, what, signal, async () => {
    const abs = workspacePath(dir);
    const bytes = await readValidatedTar(tar, limits, what, signal);
    // In the workspace, not /tmp: a sandbox's /tmp may be private to each command.
    const file = `${WORKSPACE_DIR}/.sandqueue-put-${randomBytes(6).toString("hex")}`;
    const mk = await run(["/bin/sh", "-c", `mkdir -p -- "$1" 2>/dev/null; ${CHECK_DIR}; : > "$2"`, "sh", abs, file], { timeoutMs: STEP_TIMEOUT_MS, signal });
    if (mk.exitCode !== 0) throw stepFailed(what, dir, mk);
    const b64 = bytes.toString("base64");
    for (let at = 0; at < b64.length; at += CHUNK * CHUNKS_PER_CALL) {
      throwIfTransferAborted(what, signal);
      const parts: string[] = [];
      for (let i = at; i < Math.min(b64.length, at + CHUNK * CHUNKS_PER_CALL); i += CHUNK) parts.push(b64.slice(i, i + CHUNK));
      const up = await run(["/bin/sh", "-c", `f=$1; shift; for c; do printf %s "$c"; done >> "$f"`, "sh", file, ...parts], { timeoutMs: STEP_TIMEOUT_MS, signal });
      if (up.exitCode !== 0) throw stepFailed(what, dir, up);
    }
    throwIfTransferAborted(what, signal);
    const x = await run(
      ["/bin/sh", "-c", `${CHECK_DIR}; base64 -d < "$2" | tar -x -o -f - -C "$1"; rc=$?; rm -f -- "$2"; exit $rc`, "sh", abs, file],
      { timeoutMs: STEP_TIMEOUT_MS, signal },
    );
    if (x.exitCode !== 0) throw stepFailed(what, dir, x);
  });
}

export async function getArchiveOverExec(run: RawRun, dir: string, opts: PackOptions & { signal?: AbortSignal } = {}): Promise<Readable> {
  const { signal, ...packOpts } = opts;
  const what = "getArchive";
  const abs = workspacePath(dir);
  throwIfTransferAborted(what, signal);
  const out = await run(
    ["/bin/sh", "-c", `${CHECK_DIR}; t=$(mktemp) || exit 1; tar -c -f "$t" . && base64 < "$t"; rc=$?; rm -f -- "$t"; exit $rc`, "sh", abs],
    { timeoutMs: STEP_TIMEOUT_MS, signal },
  ).catch(rethrowAborted(what, signal));
  throwIfTransferAborted(what, signal);
  if (out.exitCode !== 0) throw stepFailed(what, dir, out);
  const raw = Readable.from([Buffer.from(out.stdout.replace(/\s+/g, ""), "base64")]);
  return destroyOnAbort(normalizeTar(raw, packOpts), what, signal);
}
