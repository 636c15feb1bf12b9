/**
 * Running a job's command on a remote service whose exec call is a plain
 * synchronous request returning text (microsandbox's `sandbox.command.run`,
 * AIO's `/v1/bash/exec`): neither streams, neither sets an exact
 * environment, and microsandbox has neither env nor cwd and splits output
 * into lines. So the command runs under a small python3 program (the shim)
 * that does in the sandbox what those calls cannot:
 *
 * - exactly the request's env and cwd (nothing of the service's own env);
 * - its own session, killed whole at the deadline, at the output cap, and
 *   when the command's leader exits (nothing of an exec outlives it);
 * - each stream kept up to cap+1 bytes (the extra byte tells us it overflowed)
 *   and sent back base64-encoded in 76-character lines, so bytes survive
 *   any text transport byte for byte, line splitting included;
 * - no network: the command runs in a network namespace of its own with
 *   only loopback (unshare(CLONE_NEWNET), or with a user namespace when not
 *   root); where neither is allowed, only in a sandbox that has no interface
 *   but loopback already; else it is not run at all (fails closed);
 * - a last stdout line `#{"code":..,"signal":..,"limit":..}` with the status.
 *
 * The image must have python3 (every sandqueue image does; the contract
 * suite needs it too). A transport that cannot run it reports why.
 */
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { ExecSupervision, notRunResult } from "../exec-supervision.js";
import type { ExecLimitHit, ExecRequest, ExecResult } from "../provider.js";
import { WORKSPACE_DIR } from "../provider.js";
import { requestPrelude } from "../request-script.js";

export const SHIM = String.raw`import base64,json,os,select,signal,subprocess,sys,time
s=json.loads(sys.argv[1]);cap=s["cap"];end=time.monotonic()+s["timeoutMs"]/1000.0
def done(code,sig,limit,out,err):
    for b,f in ((out,sys.stdout),(err,sys.stderr)):
        e=base64.b64encode(bytes(b)).decode()
        for i in range(0,len(e),76):f.write(e[i:i+76]+"\n")
    sys.stdout.write("#"+json.dumps({"code":code,"signal":sig,"limit":limit})+"\n");sys.stdout.flush();sys.stderr.flush();sys.exit(0)
if s["cwd"]=="/workspace":
    try:os.makedirs(s["cwd"],exist_ok=True)
    except OSError:pass
def cut():
    import ctypes,fcntl,socket,struct
    libc=ctypes.CDLL(None,use_errno=True);u,g=os.getuid(),os.getgid()
    if libc.unshare(0x40000000)!=0:
        if libc.unshare(0x50000000)!=0:return [n for _,n in socket.if_nameindex() if n!="lo"]==[]
        for f,t in (("setgroups","deny"),("uid_map","%d %d 1"%(u,u)),("gid_map","%d %d 1"%(g,g))):
            try:open("/proc/self/"+f,"w").write(t)
            except OSError:pass
    try:
        k=socket.socket();fl=struct.unpack("16sH",fcntl.ioctl(k,0x8913,struct.pack("16sH22x",b"lo",0))[:18])[1]
        fcntl.ioctl(k,0x8914,struct.pack("16sH22x",b"lo",fl|1));k.close()
    except OSError:pass
    return True
if s.get("isolate") and not cut():
    sys.stdout.write("#"+json.dumps({"error":"network"})+"\n");sys.exit(0)
if not os.path.isdir(s["cwd"]):done(126,None,None,b"",("sh: cd: can't cd to %s\n"%s["cwd"]).encode())
try:p=subprocess.Popen(s["argv"],env=s["env"],cwd=s["cwd"],stdin=subprocess.DEVNULL,stdout=subprocess.PIPE,stderr=subprocess.PIPE,start_new_session=True)
except FileNotFoundError:done(127,None,None,b"",("sh: 1: %s: not found\n"%s["argv"][0]).encode())
except PermissionError:done(126,None,None,b"",("sh: 1: %s: Permission denied\n"%s["argv"][0]).encode())
def kill():
    try:os.killpg(p.pid,signal.SIGKILL)
    except OSError:pass
buf={p.stdout.fileno():bytearray(),p.stderr.fileno():bytearray()};open_=set(buf);limit=None;exited_at=None
while open_:
    now=time.monotonic()
    if limit is None and now>=end:limit="timeout";kill()
    if exited_at is None and p.poll() is not None:exited_at=now;kill()
    wait=0.5 if limit else max(0.0,min(end-now,0.5))
    if exited_at is not None and now-exited_at>2:break
    r,_,_=select.select(list(open_),[],[],wait)
    for fd in r:
        c=os.read(fd,65536)
        if not c:open_.discard(fd);continue
        b=buf[fd];room=cap+1-len(b)
        if room>0:b+=c[:room]
        if len(c)>room and limit is None:limit="output";kill()
rc=p.wait()
done(rc if rc>=0 else None,signal.Signals(-rc).name if rc<0 else None,limit,buf[p.stdout.fileno()],buf[p.stderr.fileno()])
`;

/** What a transport's synchronous exec call answered. */
export interface TransportOutput {
  stdout: string;
  stderr: string;
  exitCode: number | null;
}

export interface ShimTransport {
  /**
   * Runs `argv` (no shell) in the sandbox and waits for its end. `timeoutMs`
   * is how long the call may take (the shim's deadline plus a grace);
   * `signal` abandons the call.
   */
  run(argv: string[], opts: { timeoutMs: number; signal: AbortSignal }): Promise<TransportOutput>;
  /** Ends everything running in the sandbox when the shim could not (deletes the sandbox). */
  kill(): Promise<void>;
}

/** How long past the deadline the shim's own kill may take before the sandbox is deleted. */
export const KILL_GRACE_MS = 5_000;

/** The argv that runs `req` under the shim, keeping `cap` bytes of each stream (+1 to see overflow). */
export function shimArgv(req: Pick<ExecRequest, "argv" | "env" | "cwd" | "timeoutMs">, cap: number): string[] {
  // isolate: the command runs in a network namespace of its own (only loopback), or not at all.
  const spec = { argv: req.argv, env: req.env, cwd: req.cwd ?? WORKSPACE_DIR, timeoutMs: req.timeoutMs, cap, isolate: true };
  // -I -S: no user site, no PYTHON* variables, no site import (the shim needs the standard library only; faster start).
  return ["python3", "-I", "-S", "-c", SHIM, JSON.stringify(spec)];
}

interface ShimStatus {
  code: number | null;
  signal: string | null;
  limit: ExecLimitHit | null;
  /** "network": no way to cut the sandbox's network was found; nothing ran. */
  error?: string;
}

/** Decodes the shim's two streams; null status when the shim itself did not run to its end. */
export function decodeShimOutput(out: TransportOutput): { stdout: Buffer; stderr: Buffer; status: ShimStatus | null } {
  const outLines = out.stdout.split("\n").map((l) => l.trim());
  const statusLine = outLines.findLast((l) => l.startsWith("#"));
  let status: ShimStatus | null = null;
  if (statusLine) {
    try {
      status = JSON.parse(statusLine.slice(1)) as ShimStatus;
    } catch {
      status = null;
    }
  }
  const b64 = (lines: string[]): Buffer => Buffer.from(lines.filter((l) => l && !l.startsWith("#")).join(""), "base64");
  return { stdout: b64(outLines), stderr: b64(out.stderr.split("\n").map((l) => l.trim())), status };
}

/**
 * Runs `req` through `transport` under the shared supervision. The client's
 * own deadline stands behind the shim's: when the call has not ended
 * KILL_GRACE_MS after it, or when the exec is aborted, the call is
 * abandoned and the sandbox deleted (`transport.kill`).
 */
export async function runShimmed(transport: ShimTransport, req: ExecRequest, abortSignals: AbortSignal[] = []): Promise<ExecResult> {
  requestPrelude(req); // validation only: argv, cwd, env names, NUL bytes
  if (req.stdin !== undefined) {
    throw new ProviderError(ErrorCodes.CAPABILITY_UNSUPPORTED, "this provider cannot feed stdin to a command", { retryable: false });
  }
  const started = performance.now();
  if (req.signal?.aborted || abortSignals.some((s) => s.aborted)) return notRunResult(started);
  const call = new AbortController();
  let grace: NodeJS.Timeout | undefined;
  const giveUp = (): void => {
    call.abort();
    void transport.kill().catch(() => undefined);
  };
  const sup = new ExecSupervision(req, {
    abortSignals,
    kill: (why) => {
      if (why === "aborted") giveUp();
      // The shim kills at its own deadline and cap; the sandbox goes only if it does not answer.
      else grace = setTimeout(giveUp, KILL_GRACE_MS);
    },
  });
  try {
    const out = await transport.run(shimArgv(req, req.maxOutputBytes), { timeoutMs: req.timeoutMs + KILL_GRACE_MS, signal: call.signal });
    const { stdout, stderr, status } = decodeShimOutput(out);
    if (status === null) {
      if (sup.killed) return sup.result({ exitCode: null, signal: null });
      sup.stop();
      const why = out.stderr.trim().slice(0, 300) || out.stdout.trim().slice(0, 300);
      throw new ProviderError(
        ErrorCodes.PROVIDER_FAILED,
        `the command could not be run under the exec shim (exit ${out.exitCode}; the image needs python3): ${why}`,
        { retryable: false },
      );
    }
    if (status.error === "network") {
      sup.stop();
      throw new ProviderError(
        ErrorCodes.CAPABILITY_UNSUPPORTED,
        "network: the sandbox has network interfaces and no network namespace could be made in it; the command was not run",
        { retryable: false },
      );
    }
    if (status.limit === "timeout") sup.hit("timeout");
    sup.stdout.push(stdout);
    sup.stderr.push(stderr);
    return sup.result({ exitCode: status.code, signal: status.signal });
  } catch (err) {
    if (sup.killed) return sup.result({ exitCode: null, signal: null });
    sup.stop();
    throw err;
  } finally {
    clearTimeout(grace);
  }
}
