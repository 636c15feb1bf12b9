/**
 * One exec in a sandbox container under the request's limits: wall time,
 * output bytes per stream, abort; memory and pids limit events are read from
 * the container's cgroup counters afterwards. The request goes to the
 * launcher (launcher.ts) on stdin: over attach to the container's waiting
 * main process for the first exec, through an engine exec after that.
 */
import type { Duplex, Readable } from "node:stream";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import type { ExecRequest, ExecResult } from "../provider.js";
import { ExecSupervision, notRunResult } from "../exec-supervision.js";
import type { EngineClient } from "./engine-client.js";
import { EXEC_SCRIPT, TrailerScanner, encodeRequest, launcherCommand, newTag } from "./launcher.js";
import { FrameDecoder, type FrameStream } from "./stream-frames.js";

export interface ExecTarget {
  readonly id: string;
  readonly engine: EngineClient;
  readonly container: { user: string };
  /** Cgroup event counters already reported by earlier execs. */
  counters: { oomKills: number; pidsMax: number };
  /** Aborted when the sandbox is released: a running exec ends as "aborted". */
  readonly releasing: AbortSignal;
  /** Host-side cgroup counter files when the engine runs on this host (cheap to read), else null. */
  readonly hostCounters: (() => Promise<Counters | null>) | null;
  killProcesses(): Promise<void>;
  killContainer(): Promise<void>;
}

export interface Counters {
  oomKills: number;
  pidsMax: number;
}

/** After asking the init to kill, how long before the whole container is killed. */
const KILL_GRACE_MS = 2_000;

// cgroup v1 and v2 paths as mounted inside the container; `oom_kill` and
// `max` lines are what we need. Errors are silenced: a missing file just
// means no evidence.
const COUNTERS_SCRIPT =
  "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control " +
  "/sys/fs/cgroup/pids.events /sys/fs/cgroup/pids/pids.events 2>/dev/null; true";

/** How often an exec checks its container's OOM counter. */
const OOM_POLL_MS = 100;

/**
 * `viaLauncher`: the container's main process still waits for its request
 * (the sandbox's first exec); the exit status then comes from its trailers.
 */
export async function runExec(t: ExecTarget, req: ExecRequest, viaLauncher = false): Promise<ExecResult> {
  const startedAt = performance.now();
  if (req.signal?.aborted) return notRunResult(startedAt);

  const tag = newTag();
  // Validates the request before anything is started.
  const request = encodeRequest(req, tag);
  const stdin = req.stdin === undefined ? Buffer.alloc(0) : Buffer.from(req.stdin);
  let execId: string | null = null;
  let session: { socket: Duplex | null; output: Readable; head: Buffer };
  if (viaLauncher) {
    // The container's main process is waiting for this on its stdin.
    session = await t.engine.hijack({
      method: "POST",
      path: `/containers/${t.id}/attach`,
      query: { stream: true, stdin: true, stdout: true, stderr: true },
    });
  } else {
    const created = await t.engine.json<{ Id: string }>({
      method: "POST",
      path: `/containers/${t.id}/exec`,
      body: { AttachStdin: true, AttachStdout: true, AttachStderr: true, Tty: false, Cmd: launcherCommand(EXEC_SCRIPT), User: t.container.user },
    });
    execId = created.Id;
    session = await t.engine.hijack({ method: "POST", path: `/exec/${execId}/start`, body: { Detach: false, Tty: false } });
  }
  const { socket, output } = session;
  if (!socket) {
    output.destroy();
    throw new Error("engine did not upgrade the attach/exec connection; the request cannot be sent");
  }
  // Half-close after the job's stdin: the engine closes the process's stdin at EOF.
  socket.on("error", () => {});
  socket.end(stdin.length ? Buffer.concat([request, stdin]) : request);

  let ended = false;
  let escalate: NodeJS.Timeout | undefined;
  // Timer, abort (the job's signal and the sandbox's release), output caps
  // and the limit precedence are the shared supervision's; the kill is ours.
  // An output overflow stops collecting that stream and kills the tree; we
  // keep reading until the launcher's trailers say the tree is dead, so the
  // other stream's last bytes (the engine forwards the two pipes
  // independently) still arrive. If the tree does not die, the escalation
  // timer ends it.
  const sup = new ExecSupervision(req, {
    abortSignals: [t.releasing],
    kill: () => {
      t.killProcesses().catch(() => t.killContainer());
      // The init may be unable to act (stopped, replaced); then the container goes.
      escalate = setTimeout(() => {
        if (!ended) {
          void t.killContainer();
          output.destroy();
        }
      }, KILL_GRACE_MS);
    },
  });
  const capture = { stdout: sup.stdout, stderr: sup.stderr };
  const trailers = {
    stdout: new TrailerScanner(tag, (b) => capture.stdout.push(b)),
    stderr: new TrailerScanner(tag, (b) => capture.stderr.push(b)),
  };
  const decoder = new FrameDecoder((stream: FrameStream, payload) => trailers[stream].push(payload));
  // The kernel OOM-kills one process; the rest of the job would go on (and
  // end as a timeout). As with memory.oom.group on cgroup v2, the first OOM
  // kill ends the whole exec. Only where the host's cgroup files are readable.
  const hostCounters = t.hostCounters;
  const oomPoll = hostCounters
    ? setInterval(() => {
        void hostCounters().then((c) => (c && c.oomKills > t.counters.oomKills ? sup.hit("memory") : undefined), () => undefined);
      }, OOM_POLL_MS)
    : undefined;
  try {
    await new Promise<void>((resolve) => {
      output.on("data", (c: Buffer) => {
        decoder.push(c);
        // Both trailers: the job and its leftovers are gone and every byte
        // they wrote has arrived. The connection is not needed any more.
        if (trailers.stdout.done && trailers.stderr.done) resolve();
      });
      if (session.head.length) output.unshift(session.head);
      output.once("end", resolve);
      output.once("close", resolve);
      // A reset connection after we destroyed it is expected; other errors
      // show up below as a missing exit status.
      output.on("error", () => resolve());
    });
  } finally {
    ended = true;
    sup.stop();
    clearInterval(oomPoll);
    socket.destroy();
    output.destroy();
  }
  if (escalate) clearTimeout(escalate);
  trailers.stdout.flush();
  trailers.stderr.flush();

  let exitCode: number | null = trailers.stdout.status ?? trailers.stderr.status;
  if (exitCode === null && execId !== null && !t.releasing.aborted) {
    // No trailer: the launcher itself was killed (our kill sweep, or a kill
    // the job sent). The exec's own record says how it ended.
    try {
      exitCode = await execExitCode(t, execId, sup.limitHit === null ? startedAt + req.timeoutMs : performance.now() + KILL_GRACE_MS, () => sup.note("timeout"));
    } catch (err) {
      // Released under us: the container (and the exec's record) is gone.
      if (!t.releasing.aborted) throw err;
    }
  }
  // Released during the exec: the container is going away with the job.
  if (exitCode === null && t.releasing.aborted) return sup.result({ exitCode: null, signal: "SIGKILL" });

  // Ask the cgroup what happened when the process failed and we did not kill it.
  // The host's cgroup files are cheap, so they are read after every exec (a
  // fork that failed at the pids limit may still end in exit 0). Without
  // them an exec inside the container reads the counters, only when the
  // process failed.
  // Read after our own kills too, so their events are not blamed on the next exec.
  if (t.hostCounters !== null || (sup.limitHit === null && exitCode !== 0)) {
    if (sup.limitHit === null && exitCode !== 0) {
      // Leftover background processes (a fork bomb's children, forking
      // faster than the launcher's sweep) would hold the pids the next
      // exec needs; the tree goes now.
      await t.killProcesses().catch(() => {});
    }
    const ev = t.hostCounters ? await t.hostCounters().catch(() => null) : await readCounters(t);
    if (ev) {
      if (sup.limitHit === null && ev.oomKills > t.counters.oomKills) sup.note("memory");
      else if (sup.limitHit === null && ev.pidsMax > t.counters.pidsMax) sup.note("pids");
      t.counters = ev;
    }
  }
  if (exitCode === null && sup.limitHit === null) {
    // The sandbox's main process died under the job (nothing we did).
    throw new ProviderError(ErrorCodes.SANDBOX_LOST, "the sandbox ended without reporting the job's exit status", { retryable: true });
  }
  // A 128+n status means death by signal n only where a limit explains it
  // (a program may exit(137) itself): the supervision applies that rule.
  return sup.result({ exitCode, signal: exitCode === null ? "SIGKILL" : null });
}

/** Waits for an exec to end (until `overdue`, then kills as for a timeout); its exit code. */
async function execExitCode(t: ExecTarget, execId: string, overdue: number, onOverdue: () => void): Promise<number | null> {
  let inspect = await pollExec(t, execId, Math.max(overdue - performance.now(), 250));
  if (inspect.Running) {
    onOverdue();
    await t.killProcesses().catch(() => {});
    inspect = await pollExec(t, execId, KILL_GRACE_MS);
    if (inspect.Running) {
      await t.killContainer();
      inspect = await pollExec(t, execId, KILL_GRACE_MS);
    }
  }
  return inspect.ExitCode ?? null;
}

interface ExecInspect {
  Running: boolean;
  ExitCode: number | null;
}

/** Polls exec inspect until the process has exited or `waitMs` passed. */
async function pollExec(t: ExecTarget, execId: string, waitMs: number): Promise<ExecInspect> {
  const deadline = performance.now() + waitMs;
  for (let delay = 2; ; delay = Math.min(delay * 2, 100)) {
    const info = await t.engine.json<ExecInspect>({ method: "GET", path: `/exec/${execId}/json` });
    if (!info.Running) return info;
    if (performance.now() > deadline) return info;
    await new Promise((r) => setTimeout(r, delay));
  }
}

/** Reads the cgroup event counters; null when no exec could be started to read them. */
async function readCounters(t: ExecTarget): Promise<Counters | null> {
  // The kill sweep is asynchronous: the first tries may still find no free pid.
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const { Id } = await t.engine.json<{ Id: string }>({
        method: "POST",
        path: `/containers/${t.id}/exec`,
        body: { AttachStdout: true, AttachStderr: false, Tty: false, Cmd: ["/bin/sh", "-c", COUNTERS_SCRIPT], User: t.container.user },
      });
      const res = await t.engine.raw({ method: "POST", path: `/exec/${Id}/start`, body: { Detach: false, Tty: false } }, false);
      const chunks: Buffer[] = [];
      new FrameDecoder((_s, p) => chunks.push(p)).push(Buffer.concat(await res.toArray()));
      const info = await pollExec(t, Id, 1_000);
      if (info.ExitCode === 0) {
        return parseCounters(Buffer.concat(chunks).toString("utf8"));
      }
    } catch {
      // engine hiccup: try again
    }
    await new Promise((r) => setTimeout(r, 50 * (attempt + 1)));
  }
  return null;
}

/** `oom_kill N` (memory.events / memory.oom_control) and `max N` (pids.events). */
export function parseCounters(text: string): Counters {
  const num = (re: RegExp): number => Number(re.exec(text)?.[1] ?? 0);
  return { oomKills: num(/^oom_kill (\d+)/m), pidsMax: num(/^max (\d+)/m) };
}
