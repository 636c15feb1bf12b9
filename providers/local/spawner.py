"""
sandqueue spawn helper for the local provider.

Why it exists: Node's spawn() forks the whole worker, and fork copies the
page tables of its address space (about 5 ms of a blocked event loop for a
100 MiB worker, per job). This process is small, so its posix_spawn (vfork)
costs well under a millisecond, and it runs beside the worker's event loop.

Protocol: one JSON object per line on stdin, one per line on stdout.
  -> {"op": "start", "id": S, "argv": [...], "mkfifo": [path...],
      "fds": [[target_fd, path, "r" | "rw"], ...],
      "cgroup": {"limits": [{"file": F, "value": V, "optional": B}...],
                 "procs": [file...], "home": [file...],
                 "oom": {"control": path, "eventControl": path}}}
  <- {"op": "started", "id": S, "pid": N}
  <- {"op": "oom", "id": S}
  <- {"op": "exit", "id": S, "code": N | null, "signal": N | null}
  <- {"op": "error", "id": S, "message": "..."}
  -> {"op": "start", "id": S, "module": PATH, "args": [...], "fds": ...}
     instead of argv: fork this process and run main(args) of the Python
     module at PATH in the child (the egress bridge: no interpreter start
     per sandbox); reported like any other child.
FIFOs are opened without blocking ("r": read-only, "rw": read-write) and
handed to the child as `target_fd`; nothing else of this process is
inherited. The environment of every child is empty.

cgroup: the helper writes the limits, moves itself into the target cgroup
(`procs`, one per hierarchy), spawns, and moves back (`home`): the child
starts inside its limits before it can fork, with no wrapper process.

oom (cgroup v1): the helper registers an eventfd for the leaf's
memory.oom_control (cgroup.event_control) and reports the first OOM event
while the process lives, so the worker ends the whole exec at once (v1 has
no memory.oom.group) instead of polling a counter.

When stdin closes (the worker is gone) every child is SIGKILLed and the
helper exits; the children's bwrap --die-with-parent ends their sandboxes.
"""
import fcntl
import json
import os
import selectors
import signal
import sys


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def open_fd(path, mode):
    flags = os.O_RDONLY if mode == "r" else os.O_RDWR
    fd = os.open(path, flags | os.O_NONBLOCK)
    # Non-blocking only for the open itself: the child gets ordinary blocking I/O.
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def write_file(path, value, optional=False):
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        if optional:
            return
        raise
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


_modules = {}


def fork_module(path, args, fds):
    """Forks and runs main(args) of the module at `path` in the child, with `fds` as its 0, 1, 2 and nothing else."""
    module = _modules.get(path)
    if module is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"sandqueue_helper_{len(_modules)}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[path] = module
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd, target in fds:
            os.dup2(fd, target)
        # Nothing of the helper's own (the worker's pipes, the selector, other children's pidfds) stays open.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = module.main(args) or 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def spawn_in_cgroup(argv, actions, cgroup, nice=0):
    # A niceness for the child is set on this process around the spawn (the
    # child inherits it before it can fork); root may lower it again.
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    try:
        if not cgroup:
            return os.posix_spawn(argv[0], argv, {}, file_actions=actions)
        for w in cgroup["limits"]:
            write_file(w["file"], w["value"], w["optional"])
        try:
            for path in cgroup["procs"]:
                write_file(path, "0")  # "0": the writing process itself
            return os.posix_spawn(argv[0], argv, {}, file_actions=actions)
        finally:
            for path in cgroup["home"]:
                write_file(path, "0")
    finally:
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, 0)


def start(msg, children, sel):
    opened = []
    watch = None
    try:
        for path in msg.get("mkfifo", []):
            os.mkfifo(path, 0o600)
        actions = []
        dups = []
        for target, path, mode in msg.get("fds", []):
            fd = open_fd(path, mode)
            opened.append(fd)
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
            dups.append((fd, target))
        if "module" in msg:
            pid = fork_module(msg["module"], msg.get("args", []), dups)
            return register(msg, pid, None, children, sel)
        # Watching before the spawn: an OOM in the first instant is not missed.
        oom = (msg.get("cgroup") or {}).get("oom")
        watch = watch_oom(oom, msg["id"], sel) if oom else None
        argv = msg["argv"]
        pid = spawn_in_cgroup(argv, actions, msg.get("cgroup"), msg.get("nice", 0))
    except BaseException:
        if watch:
            unwatch(watch, sel)
        raise
    finally:
        for fd in opened:
            os.close(fd)
    register(msg, pid, watch, children, sel)


def register(msg, pid, watch, children, sel):
    pidfd = os.pidfd_open(pid)
    children[pid] = (msg["id"], pidfd, watch)
    sel.register(pidfd, selectors.EVENT_READ, pid)
    send({"op": "started", "id": msg["id"], "pid": pid})


def watch_oom(oom, ident, sel):
    """eventfd signalled by the kernel on each OOM in the memcg (cgroup v1 notification API)."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        control = os.open(oom["control"], os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(efd)
        raise
    try:
        write_file(oom["eventControl"], f"{efd} {control}")
    except BaseException:
        os.close(efd)
        os.close(control)
        raise
    sel.register(efd, selectors.EVENT_READ, ("oom", ident))
    return (efd, control)


def on_oom(efd, ident, sel):
    try:
        os.eventfd_read(efd)
    except BlockingIOError:
        return
    # Reported once per exec: the worker kills the whole tree on the first.
    sel.unregister(efd)
    send({"op": "oom", "id": ident})


def unwatch(watch, sel):
    efd, control = watch
    try:
        sel.unregister(efd)
    except KeyError:
        pass  # already reported
    os.close(efd)
    os.close(control)


def reap(pid, children, sel):
    ident, pidfd, watch = children.pop(pid)
    sel.unregister(pidfd)
    os.close(pidfd)
    # Closed before the exit is reported: the leaf's removal (after the exit)
    # also signals the eventfd, and nobody listens any more.
    if watch:
        unwatch(watch, sel)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    send({"op": "exit", "id": ident, "code": code if code >= 0 else None, "signal": -code if code < 0 else None})


def main():
    if not hasattr(os, "eventfd"):
        sys.exit("spawner.py needs Python 3.10 or newer (os.eventfd)")
    # Whatever the worker inherited without close-on-exec stops here.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children = {}
    sel = selectors.DefaultSelector()
    stdin = sys.stdin.buffer.raw
    sel.register(stdin, selectors.EVENT_READ, None)
    pending = b""
    while True:
        for key, _ in sel.select():
            if isinstance(key.data, tuple):
                on_oom(key.fd, key.data[1], sel)
                continue
            if key.data is not None:
                reap(key.data, children, sel)
                continue
            chunk = os.read(stdin.fileno(), 65536)
            if not chunk:
                for pid in list(children):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                msg = json.loads(line)
                try:
                    start(msg, children, sel)
                except Exception as err:  # reported to the worker, which owns the error model
                    send({"op": "error", "id": msg.get("id"), "message": f"{type(err).__name__}: {err}"})


if __name__ == "__main__":
    main()
