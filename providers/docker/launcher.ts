/**
 * The in-container launcher: a POSIX sh script that reads one request
 * (environment, cwd, argv) from stdin, runs it with the rest of stdin as the
 * job's stdin; as PID 1 it then kills whatever the job left behind and
 * reports the exit status as a trailer line on stdout and stderr.
 *
 * As a sandbox's main process (PID 1) it serves the sandbox's first exec
 * over `POST /containers/{id}/attach` — no `runc exec` per job — and then
 * stays as the idle init that kills on SIGUSR1. Later execs read the same
 * request through `POST /containers/{id}/exec`. Either way the request
 * (secrets included) only travels on the attach stream: never on a command
 * line, in the container's or exec's config, or in logs.
 */
import { randomBytes } from "node:crypto";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import type { ExecRequest } from "../provider.js";
import { requestPrelude, shellQuote } from "../request-script.js";

/** Kills every process of the sandbox user but PID 1 itself; builtins only, so it works at the pids limit. */
const KILL_ALL = "kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null";

/**
 * PID 1 of every sandbox: serves the first exec, then idles.
 *
 * dash's `read` takes a byte per syscall, so it only reads the short header
 * line ("<request bytes> <tag>"); the request comes in with one `head -c`,
 * which reads no further than asked, so the rest of stdin is the job's. The
 * job runs in the background so the USR1 trap can run while the launcher
 * waits; a trapped signal interrupts `wait`, hence the loop (k marks an
 * interrupted wait; `2>/dev/null` keeps dash's "Killed" notice out of the
 * job's stderr). A kill that arrives while the request is still being read
 * (an early abort) means the job never starts. Leftovers are killed before the trailer, so no job process
 * writes after it (one still dying may race it; the provider drops what
 * follows).
 *
 * On SIGUSR1 it kills every other process of the sandbox user, so a
 * timed-out or cancelled job's whole tree dies while the container (and its
 * tmpfs workspace, which a snapshot still needs) stays up. A PID 1 ignores
 * signals it has no handler for, and dash catches SIGINT for itself, so INT
 * is ignored: the job cannot stop its own sandbox. The engine stops it with
 * SIGKILL.
 */
export const INIT_SCRIPT =
  `k=; trap 'k=1; ${KILL_ALL}' USR1; trap '' INT; ` +
  'if read -r n tag; then req=$(/usr/bin/head -c "$n"); exec 3<&0; st=137; ' +
  '[ -n "$k" ] || { ( eval "$req" ) <&3 3<&- & pid=$!; unset req; ' +
  'while :; do k=; wait "$pid" 2>/dev/null; st=$?; [ -z "$k" ] && break; done; }; ' +
  `${KILL_ALL}; exec 3<&- 0</dev/null; ` +
  'printf "%s%03d\\n" "$tag" "$st"; printf "%s%03d\\n" "$tag" "$st" >&2; fi; ' +
  "while :; do sleep infinity & wait; done";

/**
 * Later execs of a sandbox (`POST /containers/{id}/exec`): the same request
 * on stdin, but the launcher becomes the job (the request ends in `exec`),
 * so the exec's own exit code is the job's and no trailer is written.
 */
export const EXEC_SCRIPT = 'read -r n tag && req=$(/usr/bin/head -c "$n") && eval "$req"';

/**
 * Engines add their own variables (Podman: container=podman, HOME, HOSTNAME,
 * TERM) to a container's and an exec's environment; the launcher starts
 * with none, so the job sees exactly its request's.
 */
export function launcherCommand(script: string): string[] {
  return ["/usr/bin/env", "-i", "/bin/sh", "-c", script];
}

const TAG_PREFIX = "\u0001sandqueue-exit:";
/** Trailer: tag + three-digit status + newline. */
export const TRAILER_TAIL = 4;

/** A random tag per exec: job output cannot end the stream early by accident, nor guess it. */
export function newTag(): string {
  return TAG_PREFIX + randomBytes(16).toString("hex");
}

/**
 * The shell text the launcher evals for `req`: cd, then exactly the
 * request's environment (dash exports PWD and OLDPWD itself, so they go
 * first), then exec argv with default signal dispositions (a background
 * job of a non-interactive shell starts with SIGINT and SIGQUIT ignored).
 * `env` would read a first argument containing "=" as an assignment; such
 * an argv goes through `sh -c 'exec "$@"'`.
 */
export function requestScript(req: Pick<ExecRequest, "argv" | "env" | "cwd">): string {
  const lines = requestPrelude(req);
  lines.push(`set -- ${req.argv.map(shellQuote).join(" ")}`);
  const viaShell = req.argv[0]!.includes("=") ? `/bin/sh -c 'exec "$@"' sh ` : "";
  lines.push(`exec /usr/bin/env --default-signal -- ${viaShell}"$@"`);
  return lines.join("\n") + "\n";
}

/** Header line + request script, as the launcher reads them from stdin. */
export function encodeRequest(req: Pick<ExecRequest, "argv" | "env" | "cwd">, tag: string): Buffer {
  const script = Buffer.from(requestScript(req), "utf8");
  return Buffer.concat([Buffer.from(`${script.length} ${tag}\n`, "utf8"), script]);
}

/**
 * Splits one output stream into the job's bytes and the launcher's trailer.
 * Holds back as many bytes as could be the start of a trailer; everything
 * after the trailer (a killed leftover racing the launcher) is dropped.
 */
export class TrailerScanner {
  private pending: Buffer = Buffer.alloc(0);
  private readonly tag: Buffer;
  /** The job's exit status, once the trailer was seen. */
  status: number | null = null;

  constructor(
    tag: string,
    private readonly emit: (bytes: Buffer) => void,
  ) {
    this.tag = Buffer.from(tag, "utf8");
  }

  get done(): boolean {
    return this.status !== null;
  }

  push(chunk: Buffer): void {
    if (this.done) return;
    const buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const at = buf.indexOf(this.tag);
    if (at >= 0) {
      this.out(buf.subarray(0, at));
      const end = at + this.tag.length + TRAILER_TAIL;
      if (buf.length < end) {
        this.pending = buf.subarray(at);
        return;
      }
      this.pending = Buffer.alloc(0);
      this.status = Number(buf.subarray(at + this.tag.length, end - 1).toString("latin1"));
      return;
    }
    const keep = Math.min(buf.length, this.tag.length - 1);
    this.out(buf.subarray(0, buf.length - keep));
    this.pending = buf.subarray(buf.length - keep);
  }

  /** The stream ended without a trailer: what was held back is output after all. */
  flush(): void {
    if (!this.done) this.out(this.pending);
    this.pending = Buffer.alloc(0);
  }

  private out(b: Buffer): void {
    if (b.length) this.emit(b);
  }
}
