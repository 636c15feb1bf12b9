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
import type { RawOutput } from "./tar-over-exec.js";

// Only built-in modules at start (os, sys, select, time, binascii, _signal): the shim's own start-up
// is most of what it costs. argv: cap, timeoutMs, isolate (0/1), cwd, env count, NAME=value..., argv...
export const SHIM = String.raw`import os,sys,select,time,binascii,_signal
a=sys.argv;cap=int(a[1]);end=time.monotonic()+int(a[2])/1000.0;iso=a[3]=="1";cwd=a[4];ne=int(a[5])
env=dict(x.split("=",1) for x in a[6:6+ne]);argv=a[6+ne:]
SIG={v:k for k,v in vars(_signal).items() if k.startswith("SIG") and not k.startswith("SIG_") and isinstance(v,int)}
def js(v):return "null" if v is None else ('"%s"'%v if isinstance(v,str) else str(v))
def done(code,sig,limit,out,err):
    for b,f in ((out,sys.stdout),(err,sys.stderr)):
        e=binascii.b2a_base64(bytes(b),newline=False).decode()
        f.write("".join(e[i:i+76]+"\n" for i in range(0,len(e),76)))
    sys.stdout.write('#{"code":%s,"signal":%s,"limit":%s}\n'%(js(code),js(sig),js(limit)));sys.stdout.flush();sys.stderr.flush();os._exit(0)
if cwd=="/workspace":
    try:os.makedirs(cwd,exist_ok=True)
    except OSError:pass
def cut():
    import fcntl,_socket,_struct
    un=getattr(os,"unshare",None)
    if un is None:
        import ctypes
        libc=ctypes.CDLL(None,use_errno=True)
        def un(f):
            if libc.unshare(f)!=0:raise OSError(ctypes.get_errno(),"unshare")
    u,g=os.getuid(),os.getgid()
    try:un(0x40000000)
    except OSError:
        try:un(0x50000000)
        except OSError:return [n for _,n in _socket.if_nameindex() if n!="lo"]==[]
        for f,t in (("setgroups","deny"),("uid_map","%d %d 1"%(u,u)),("gid_map","%d %d 1"%(g,g))):
            try:
                with open("/proc/self/"+f,"w") as h:h.write(t)
            except OSError:pass
    try:
        k=_socket.socket(_socket.AF_INET,_socket.SOCK_DGRAM);fl=_struct.unpack("16sH",fcntl.ioctl(k.fileno(),0x8913,_struct.pack("16sH22x",b"lo",0))[:18])[1]
        fcntl.ioctl(k.fileno(),0x8914,_struct.pack("16sH22x",b"lo",fl|1));k.close()
    except OSError:pass
    return True
if iso and not cut():
    sys.stdout.write('#{"error":"network"}\n');sys.stdout.flush();os._exit(0)
if not os.path.isdir(cwd):done(126,None,None,b"",("sh: cd: can't cd to %s\n"%cwd).encode())
o0,o1=os.pipe();e0,e1=os.pipe();x0,x1=os.pipe()
pid=os.fork()
if pid==0:
    try:
        os.setsid();n=os.open("/dev/null",os.O_RDONLY);os.dup2(n,0);os.dup2(o1,1);os.dup2(e1,2);os.chdir(cwd);os.execvpe(argv[0],argv,env)
    except OSError as x:os.write(x1,str(x.errno).encode())
    os._exit(127)
for f in (o1,e1,x1):os.close(f)
err=os.read(x0,32);os.close(x0)
if err:
    os.waitpid(pid,0);no=int(err)
    done(127 if no==2 else 126,None,None,b"",("sh: 1: %s: %s\n"%(argv[0],"not found" if no==2 else "Permission denied")).encode())
def kill():
    try:os.killpg(pid,9)
    except OSError:pass
buf={o0:bytearray(),e0:bytearray()};open_=set(buf);limit=None;exited_at=None;status=None
while open_:
    now=time.monotonic()
    if limit is None and now>=end:limit="timeout";kill()
    if status is None:
        w,st=os.waitpid(pid,os.WNOHANG)
        if w:status=st;exited_at=now;kill()
    wait=0.5 if limit else max(0.0,min(end-now,0.5))
    if status is not None:wait=min(wait,0.05)
    if exited_at is not None and now-exited_at>2:break
    r,_,_=select.select(list(open_),[],[],wait)
    for fd in r:
        c=os.read(fd,65536)
        if not c:open_.discard(fd);continue
        b=buf[fd];room=cap+1-len(b)
        if room>0:b+=c[:room]
        if len(c)>room and limit is None:limit="output";kill()
if status is None:status=os.waitpid(pid,0)[1]
if os.WIFSIGNALED(status):done(None,SIG.get(os.WTERMSIG(status),"SIG%d"%os.WTERMSIG(status)),limit,buf[o0],buf[e0])
done(os.WEXITSTATUS(status),None,limit,buf[o0],buf[e0])
`;

/** What a transport's synchronous exec call answered. */
export type TransportOutput = RawOutput;

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
  const env = Object.entries(req.env).map(([k, v]) => `${k}=${v}`);
  // isolate 1: the command runs in a network namespace of its own (only loopback), or not at all.
  // -I -S: no user site, no PYTHON* variables, no site import (standard library only; faster start).
  return ["python3", "-I", "-S", "-c", SHIM, String(cap), String(Math.max(1, Math.round(req.timeoutMs))), "1", req.cwd ?? WORKSPACE_DIR, String(env.length), ...env, ...req.argv];
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
