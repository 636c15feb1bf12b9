/**
 * One exec in a pod over the API server's WebSocket exec protocol, through
 * @kubernetes/client-node's own `Exec` (subprotocols v5.channel.k8s.io,
 * then v4 and older, as the server chooses): stdout and stderr on their
 * channels, the exit code from the status channel's metav1.Status.
 *
 * What the protocol does not carry is added around the job: Kubernetes
 * exec has no environment and no working directory, so the command is
 * `env -i /bin/sh -c '<read the environment from stdin>; cd "$1"; exec "$@"'`
 * (the environment on stdin, see envHeader); under v4, which cannot close
 * stdin, the job's stdin is cut to its known length with `head -c`.
 */
import { PassThrough, Readable, Writable } from "node:stream";
import { Exec, type KubeConfig, type V1Status } from "@kubernetes/client-node";
// Not re-exported by the package index; the package has no "exports" map, so its file is importable.
import { WebSocketHandler } from "@kubernetes/client-node/dist/web-socket-handler.js";
import type { WebSocket } from "ws";
import { WORKSPACE_DIR } from "../provider.js";
import { resumingSocketFactory } from "./connections.js";

export const V5 = "v5.channel.k8s.io";

/** How an exec ended: its status, or the connection closing without one. */
export type ExecEnd = { kind: "status"; status: V1Status } | { kind: "closed"; code: number };

export interface ExecHandle {
  /** The subprotocol the server chose. */
  readonly protocol: string;
  readonly done: Promise<ExecEnd>;
  /** Closes the connection: the runtime kills the exec's process (containerd: SIGKILL). */
  close(): void;
}

export interface OpenExec {
  kc: KubeConfig;
  namespace: string;
  pod: string;
  container: string;
  argv: string[];
  /** Sent as stdin. Under v5 its end closes stdin; under v4 client-node closes the whole connection at its end. */
  stdin: Readable | null;
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
}

/** An HTTP answer to the upgrade request, as the ws library reports it. */
export class ExecUpgradeError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
  get body(): string {
    return this.message;
  }
}

/** A sink that hands each chunk on and ignores client-node's end() (the status decides the end). */
function sink(onChunk: (chunk: Buffer) => void): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      onChunk(chunk);
      cb();
    },
  });
}

/** client-node's Exec for a KubeConfig, its connections resuming TLS sessions and made ahead (one per KubeConfig). */
const execs = new WeakMap<KubeConfig, { exec: Exec; close: () => void }>();
function execFor(kc: KubeConfig): Exec {
  let e = execs.get(kc);
  if (!e) {
    const sockets = resumingSocketFactory();
    e = { exec: new Exec(kc, new WebSocketHandler(kc, sockets.factory as never)), close: sockets.close };
    execs.set(kc, e);
  }
  return e.exec;
}

/** Drops the connection made ahead for a KubeConfig's next exec (the provider is closing). */
export function closeExecConnections(kc: KubeConfig): void {
  execs.get(kc)?.close();
  execs.delete(kc);
}

export async function openExec(o: OpenExec): Promise<ExecHandle> {
  let status: V1Status | null = null;
  let ended: ((end: ExecEnd) => void) | null = null;
  let ws: WebSocket;
  try {
    ws = (await execFor(o.kc).exec(o.namespace, o.pod, o.container, o.argv, sink(o.onStdout), sink(o.onStderr), o.stdin, false, (s) => {
      status = s;
      // The status is the exec's last message (its output came before it): done without waiting for the close handshake.
      ended?.({ kind: "status", status: s });
    })) as unknown as WebSocket;
  } catch (err) {
    const message = (err as { message?: string }).message ?? String(err);
    const code = /Unexpected server response: (\d+)/.exec(message)?.[1];
    if (code) throw new ExecUpgradeError(Number(code), `exec refused by the API server: ${message}`);
    throw (err as { error?: unknown }).error ?? err;
  }
  const done = new Promise<ExecEnd>((resolve) => {
    ended = resolve;
    const finish = (code: number): void => resolve(status ? { kind: "status", status } : { kind: "closed", code });
    if (ws.readyState === ws.CLOSED) finish(1006);
    ws.addEventListener("close", (ev) => finish(ev.code));
    ws.addEventListener("error", () => undefined);
  });
  return {
    protocol: ws.protocol,
    done,
    close: () => {
      // A close handshake the server does not answer must not keep the exec alive.
      ws.close();
      setTimeout(() => ws.readyState !== ws.CLOSED && ws.terminate(), 1000).unref();
    },
  };
}

/** The exit code a status reports, or null when it reports something else (an error of the runtime). */
export function exitCodeOf(status: V1Status): number | null {
  if (status.status === "Success") return 0;
  if (status.reason !== "NonZeroExitCode") return null;
  const cause = status.details?.causes?.find((c) => c.reason === "ExitCode" || (c as { type?: string }).type === "ExitCode");
  const n = Number(cause?.message);
  return Number.isInteger(n) ? n : null;
}

/**
 * The environment travels on stdin, never in the command: the exec's
 * command is part of the request URL, which API server audit logs and the
 * node's process list show, and the job's secrets are in its environment.
 * One line per variable, `NAME=value`, then an empty line; bytes outside
 * printable ASCII and backslashes as `\0ooo`, decoded by printf %b only
 * when present. The shell's `read` takes stdin byte by byte (POSIX: no
 * read past the newline on a pipe), so what follows the header is left
 * whole for the job.
 */
/** How a header line becomes an exported variable. */
const EXPORT_LINE = [
  '  case $__sq_l in',
  '    *\\\\*) __sq_v=$(printf "%bx" "${__sq_l#*=}"); export "${__sq_l%%=*}=${__sq_v%x}" ;;',
  '    *) export "$__sq_l" ;;',
  "  esac",
].join("\n");
const READ_ENV = [
  'while IFS= read -r __sq_l && [ -n "$__sq_l" ]; do',
  EXPORT_LINE,
  "done",
  "unset __sq_l __sq_v",
  // cd sets OLDPWD, which is not the job's.
  'cd -- "$1" || exit 126; unset OLDPWD',
].join("\n");
const RUN = `${READ_ENV}\nshift; exec "$@"`;
/** v4 cannot close stdin: the job reads exactly its known length after the header. */
const RUN_V4 = `${READ_ENV}\nn=$2; shift 2; head -c "$n" | "$@"`;

/** Where the extraction finds tar and head: the shell has no environment yet (env -i). */
export const TOOLS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/**
 * RUN with archives extracted into /workspace first (carried-put.ts), in
 * the same process chain: env -i, sh, tar, the job. The header is read
 * first but exported only after the extraction, so tar runs with none of
 * the job's environment (TAR_OPTIONS, PATH). `$1` cwd, `$2` the job's
 * stdin length under v4 (else empty), `$3` the mark printed once the
 * archives are in, then each archive's size ("" for the last one when it
 * ends stdin: tar reads it to the end, the job then gets /dev/null),
 * `--`, the job's argv (none: extract only). Tar's diagnostics go to
 * stdout, before the mark; exit 3 when /workspace is not the directory.
 */
const RUN_CARRYING = [
  "__sq_h=",
  'while IFS= read -r __sq_l && [ -n "$__sq_l" ]; do __sq_h="$__sq_h$__sq_l',
  '"; done',
  "__sq_d=$1 __sq_n=$2 __sq_m=$3; shift 3",
  `PATH=${TOOLS_PATH}`,
  `cd -P -- ${WORKSPACE_DIR} && [ "$PWD" = ${WORKSPACE_DIR} ] || exit 3`,
  'while [ "$1" != -- ]; do',
  '  if [ -n "$1" ]; then head -c "$1" | tar -x -f - 2>&1; else tar -x -f - 2>&1 && exec </dev/null; fi || exit',
  "  shift",
  "done",
  'shift; unset PATH; printf %s "$__sq_m"',
  "set -f; IFS='",
  "'",
  "for __sq_l in $__sq_h; do",
  EXPORT_LINE,
  "done",
  "set +f; unset IFS __sq_h __sq_l __sq_v __sq_m",
  'cd -- "$__sq_d" || exit 126; unset OLDPWD __sq_d',
  '[ $# -gt 0 ] || exit 0',
  '[ -z "$__sq_n" ] && exec "$@"',
  'head -c "$__sq_n" | "$@"',
].join("\n");

function encodeValue(v: string): string {
  let out = "";
  for (const byte of Buffer.from(v, "utf8")) {
    out += byte >= 0x20 && byte < 0x7f && byte !== 0x5c ? String.fromCharCode(byte) : `\\0${byte.toString(8).padStart(3, "0")}`;
  }
  return out;
}

/** The stdin header that carries `env` (PWD added as the working directory when not given). */
export function envHeader(env: Record<string, string>, cwd: string): Buffer {
  const vars = { ...(env.PWD === undefined ? { PWD: cwd } : {}), ...env };
  return Buffer.from(`${Object.entries(vars).map(([k, v]) => `${k}=${encodeValue(v)}\n`).join("")}\n`, "latin1");
}

/** Archives carried in front of the job (RUN_CARRYING): its mark and each archive's size ("" to the end of stdin). */
export interface CarriedArgs {
  mark: string;
  sizes: string[];
}

/**
 * The command that runs `argv` in `cwd` with exactly the environment sent
 * by `envHeader` on stdin. `v4StdinBytes`: under v4 (no way to close
 * stdin), the length of the job's stdin after the header (0 for none).
 * `carry`: archives on stdin after the header, extracted first.
 */
export function wrapCommand(argv: string[], cwd: string, v4StdinBytes: number | null, carry: CarriedArgs | null = null): string[] {
  if (carry) {
    return ["env", "-i", "/bin/sh", "-c", RUN_CARRYING, "sandqueue-exec", cwd, v4StdinBytes === null ? "" : String(v4StdinBytes), carry.mark, ...carry.sizes, "--", ...argv];
  }
  return v4StdinBytes === null
    ? ["env", "-i", "/bin/sh", "-c", RUN, "sandqueue-exec", cwd, ...argv]
    : ["env", "-i", "/bin/sh", "-c", RUN_V4, "sandqueue-exec", cwd, String(v4StdinBytes), ...argv];
}

/**
 * Stdin for an exec: under v5 the bytes then their end (client-node sends
 * the close frame); under v4 the bytes and no end, since client-node would
 * close the whole connection at the end (the command reads only the known
 * length anyway).
 */
export function stdinStream(bytes: Buffer | Readable, protocol: string): Readable {
  const out = new PassThrough();
  const ends = protocol === V5;
  if (Buffer.isBuffer(bytes)) {
    if (ends) out.end(bytes);
    else out.write(bytes);
  } else {
    bytes.pipe(out, { end: ends });
  }
  return out;
}
