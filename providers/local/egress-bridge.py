"""
sandqueue egress bridge for the local provider.

A sandbox with `network: "proxy"` keeps its own empty network namespace
(bwrap --unshare-net). This process listens on 127.0.0.1:<port> *inside*
that namespace and carries each connection, byte for byte, to the worker's
egress proxy on a unix socket outside it. It runs on the host, started by
spawn helper (spawner.py) outside the sandbox's pid namespace and cgroup:
the job can neither see nor signal it, and it holds nothing the job could
use but the same proxy, under the same policy, that the socket gives anyway.

Usage: egress-bridge.py BWRAP_PID PORT SOCKET [CGROUP_PROCS]
       egress-bridge.py --pid PID PORT SOCKET
  BWRAP_PID     bwrap's monitor process; its child (the sandbox's pid 1)
                is found by parent pid and must live in another netns
  --pid PID     a process in the sandbox's netns itself (a container's
                init, docker provider); the bridge exits with it
  PORT          the port to listen on inside the sandbox
  SOCKET        the proxy's unix socket for this sandbox
  CGROUP_PROCS  cgroup.procs of the sandbox's exec: where to look for the
                child (else all of /proc)
Prints "ready" on stdout once listening (or a reason on stderr and exits 1).
Exits when bwrap exits (pidfd), and with the spawn helper (PDEATHSIG).

The listening socket belongs to the sandbox's namespace; after setns the
bridge only accepts there and connects to a path on the host's filesystem,
which needs no network at all.
"""
import errno
import os
import selectors
import signal
import socket
import sys
import time

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
CHUNK = 65536
SETUP_TIMEOUT_S = 10.0

try:
    # Not in python3-minimal (libpython3.x-stdlib has it): without it, nsenter enters the namespace.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
except ImportError:
    ctypes = libc = None
NSENTER = "/usr/bin/nsenter"  # util-linux, essential on Debian


def fail(message):
    sys.stderr.write(f"egress bridge: {message}\n")
    sys.stderr.flush()
    sys.exit(1)


def ppid_of(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The name may hold spaces and parentheses: the fields after the last ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def sandbox_child(bwrap_pid, procs_file):
    """The sandbox's pid 1: bwrap's child in a network namespace other than ours."""
    own = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if procs_file:
            with open(procs_file) as f:
                pids = [int(p) for p in f.read().split()]
        else:
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        for pid in pids:
            try:
                if pid != bwrap_pid and ppid_of(pid) == bwrap_pid and os.stat(f"/proc/{pid}/ns/net").st_ino != own:
                    return pid
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        time.sleep(0.001)
    fail(f"no sandbox process under bwrap {bwrap_pid} after {SETUP_TIMEOUT_S:.0f}s")


def enter_netns(pid, pidfd, port, socket_path):
    """setns(2) where Python can (3.12's os.setns, or ctypes); else this program again under nsenter."""
    if not hasattr(os, "setns") and libc is None:
        # The watched process's pidfd crosses the exec, so the identity of what we watch cannot change.
        os.set_inheritable(pidfd, True)
        argv = [NSENTER, f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-I", os.path.abspath(__file__), "--entered", str(pidfd), str(port), socket_path]
        try:
            os.execv(NSENTER, argv)
        except OSError as err:
            fail(f"cannot run {NSENTER} to enter the sandbox's network namespace: {err}")
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
        elif libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except OSError as err:
        fail(f"setns into the sandbox's network namespace: {err}")
    finally:
        os.close(fd)


def listen(port):
    """Binds once bwrap has brought the namespace's loopback up (no address on it before)."""
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(256)
            s.setblocking(False)
            return s
        except OSError as err:
            s.close()
            if err.errno != errno.EADDRNOTAVAIL or time.monotonic() > deadline:
                fail(f"listen on 127.0.0.1:{port} in the sandbox: {err}")
            time.sleep(0.001)


class Side:
    """One socket of a pair; `out` holds bytes read from the other side, not yet written here."""

    __slots__ = ("sock", "peer", "out", "eof_in", "shut_out", "events")

    def __init__(self, sock):
        self.sock = sock
        self.events = selectors.EVENT_READ  # as registered
        self.peer = None
        self.out = b""
        self.eof_in = False  # nothing more will be read from this socket
        self.shut_out = False  # write side shut down


class Bridge:
    def __init__(self, listener, socket_path, pidfd):
        self.listener = listener
        self.socket_path = socket_path
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, "accept")
        self.sel.register(pidfd, selectors.EVENT_READ, "exit")

    def run(self):
        while True:
            for key, mask in self.sel.select():
                if key.data == "exit":
                    return
                if key.data == "accept":
                    self.accept()
                    continue
                side = key.data
                if mask & selectors.EVENT_WRITE:
                    self.flush(side)
                if mask & selectors.EVENT_READ and side.sock.fileno() != -1:
                    self.pump(side)

    def accept(self):
        try:
            client, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.socket_path)  # a local socket: immediate or refused
        except OSError:
            upstream.close()
            client.close()  # the proxy is not serving this sandbox (any more)
            return
        for s in (client, upstream):
            s.setblocking(False)
        a, b = Side(client), Side(upstream)
        a.peer, b.peer = b, a
        if client.family == socket.AF_INET:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sel.register(client, selectors.EVENT_READ, a)
        self.sel.register(upstream, selectors.EVENT_READ, b)

    def pump(self, side):
        """Reads from `side` and writes to its peer; backpressure: no reading while the peer has bytes pending."""
        try:
            data = side.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.close(side)
        peer = side.peer
        if not data:
            side.eof_in = True
            self.update(side)
            if not peer.out:
                self.shutdown_write(peer)
            return
        peer.out += data
        self.flush(peer)

    def flush(self, side):
        if side.sock.fileno() == -1:
            return
        if side.out:
            try:
                n = side.sock.send(side.out)
                side.out = side.out[n:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return self.close(side)
        if not side.out and side.peer.eof_in:
            self.shutdown_write(side)
        self.update(side)
        self.update(side.peer)

    def shutdown_write(self, side):
        if side.shut_out:
            return
        side.shut_out = True
        try:
            side.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        # Both ways ended and delivered: nothing more can move.
        if side.peer.shut_out:
            self.close(side)

    def update(self, side):
        """Interest of one socket: read unless its input ended or its peer is backed up; write while it has bytes pending."""
        if side.sock.fileno() == -1:
            return
        events = 0
        if not side.eof_in and not side.peer.out:
            events |= selectors.EVENT_READ
        if side.out:
            events |= selectors.EVENT_WRITE
        # Unchanged in the common case (everything written at once): no epoll_ctl per chunk.
        if events == side.events:
            return
        if not side.events:
            self.sel.register(side.sock, events, side)
        elif events:
            self.sel.modify(side.sock, events, side)
        else:
            self.sel.unregister(side.sock)
        side.events = events

    def close(self, side):
        for s in (side, side.peer):
            if s.sock.fileno() == -1:
                continue
            if s.events:
                self.sel.unregister(s.sock)
                s.events = 0
            s.sock.close()


def main(argv=None):
    """argv: the arguments (sys.argv[1:] when run as a program; the spawn helper passes them when it forks this)."""
    args = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if args[:1] == ["--entered"]:
        # Re-executed by nsenter inside the namespace (enter_netns): PIDFD PORT SOCKET.
        pidfd, port, socket_path = int(args[1]), int(args[2]), args[3]
        os.set_inheritable(pidfd, False)
        return serve(pidfd, port, socket_path)
    direct = args[:1] == ["--pid"]
    if direct:
        args = args[1:]
    if len(args) not in (3, 4) or (direct and len(args) != 3):
        fail("usage: egress-bridge.py BWRAP_PID PORT SOCKET [CGROUP_PROCS] | --pid PID PORT SOCKET")
    watch_pid, port, socket_path = int(args[0]), int(args[1]), args[2]
    procs_file = args[3] if len(args) == 4 else None
    if libc is not None:
        # Dies with its parent (the spawn helper, or the worker); it also exits with the sandbox (serve()).
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        pidfd = os.pidfd_open(watch_pid)
    except ProcessLookupError:
        fail(f"process {watch_pid} is gone")
    if direct:
        if os.stat(f"/proc/{watch_pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
            fail(f"process {watch_pid} shares this host's network namespace: refusing to listen there")
        enter_netns(watch_pid, pidfd, port, socket_path)
    else:
        enter_netns(sandbox_child(watch_pid, procs_file), pidfd, port, socket_path)
    serve(pidfd, port, socket_path)


def serve(pidfd, port, socket_path):
    listener = listen(port)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # stdout stays open: for the local provider it is a FIFO this process holds read-write, and
    # closing it before the worker has opened its end would discard "ready" with the pipe.
    Bridge(listener, socket_path, pidfd).run()


if __name__ == "__main__":
    main()
