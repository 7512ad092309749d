"""A vif's host side: where the frames a guest sends go, and where the frames it receives come from.

All host sides speak QEMU's stream protocol on a Unix stream socket: each Ethernet frame is preceded by its
length as a 4-byte big-endian integer. `StreamLink` is that framing over one connected socket, non-blocking
and bounded both ways: what the peer sends is cut into frames as it arrives (a length over MAX_FRAME is a
broken peer: the link is closed with one log line), what the guest sends is queued up to OUT_LIMIT bytes
(beyond that `send` says no and netback leaves the guest's requests on its ring until `on_writable`).

    PasstLink    `--net user`: a passt process (Debian's `passt`) started for this vif, one-off, in the
                 foreground, on a socket in a private directory, with no port forwarding; stopped with it.
    SocketLink   `--net socket:PATH`: connect to PATH if it exists, else listen there for one peer at a time
                 (another miniguest, or anything speaking the protocol). A listener removes its socket file.
    NullLink     no host side: frames from the guest are counted and dropped (a cable to nowhere).

Links run on the host loop (hypervisor/hostloop.py) of the domain: callbacks come on the domain's thread.
"""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from typing import Callable, Optional

from miniguest.hypervisor.host import HostLoop

MAX_FRAME = 65535 + 18               # the largest frame accepted from a peer (a 64 KiB IP packet, VLAN-tagged)
OUT_LIMIT = 1 << 20                  # bytes queued toward the peer before `send` refuses
READ_CHUNK = 256 << 10
_LEN = struct.Struct(">I")


class LinkError(Exception):
    """A host side that cannot be set up (one line for the user)."""


class Link:
    """The interface netback sees. Subclasses call `self.on_frame(frame)` for each frame from the host."""

    name = "none"

    def __init__(self) -> None:
        self.on_frame: Callable[[bytes], None] = lambda frame: None
        self.on_writable: Callable[[], None] = lambda: None
        self.report: Callable[[str], None] = lambda msg: None
        self.frames_out = self.frames_in = self.dropped_out = 0

    def start(self, loop: HostLoop) -> None:
        """Attach to the host loop (connect, listen, spawn)."""

    def send(self, frame: bytes) -> bool:
        """Queue a frame toward the host. False: the frame is taken but the queue is now full (send no
        more until on_writable)."""
        self.dropped_out += 1
        return True

    def flush(self) -> None:
        """Push what `send` queued (netback calls it after each batch of frames)."""

    def pause_reading(self) -> None:
        """Stop taking frames from the host (the guest has no room for them)."""

    def resume_reading(self) -> None:
        pass

    @property
    def waits_for_host(self) -> bool:
        """Frames may arrive from outside at any time: the guest's idle time should follow real time."""
        return False

    def close(self) -> None:
        pass


NullLink = Link


class StreamLink(Link):
    """QEMU's length-prefixed frame stream over a connected, non-blocking socket."""

    def __init__(self) -> None:
        super().__init__()
        self.sock: Optional[socket.socket] = None
        self.loop: Optional[HostLoop] = None
        self._in = bytearray()
        self._out = bytearray()
        self._reading = True
        self._writer = False
        self.closed_reason: Optional[str] = None

    @property
    def connected(self) -> bool:
        return self.sock is not None

    @property
    def waits_for_host(self) -> bool:
        return True

    def attach(self, sock: socket.socket) -> None:
        assert self.loop is not None
        sock.setblocking(False)
        self.sock = sock
        self._in.clear()
        self._out.clear()
        if self._reading:
            self.loop.add_reader(sock.fileno(), self._on_readable)

    def detach(self, why: Optional[str]) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self.loop is not None and not self.loop.closed:
            self.loop.remove_reader(sock.fileno())
            self.loop.remove_writer(sock.fileno())
        self._writer = False
        sock.close()
        self._in.clear()
        self._out.clear()
        if why:
            self.report(why)
        self.disconnected()

    def disconnected(self) -> None:
        """The peer went away (a listener waits for the next one)."""

    # -- from the peer ---------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.detach(f"{self.name}: {e.strerror or e}; link down")
            return
        if not data:
            self.detach(f"{self.name}: the peer closed the connection; link down")
            return
        buf = self._in
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > MAX_FRAME:
                self.detach(f"{self.name}: the peer sent a {n}-byte frame (more than {MAX_FRAME}); "
                            f"link closed")
                return
            if len(buf) - pos - 4 < n:
                break
            frame = bytes(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            if n:
                self.frames_in += 1
                self.on_frame(frame)
                if self.sock is not sock:
                    return                    # closed while delivering
        del buf[:pos]

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            if self.sock is not None and self.loop is not None:
                self.loop.remove_reader(self.sock.fileno())

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            if self.sock is not None and self.loop is not None:
                self.loop.add_reader(self.sock.fileno(), self._on_readable)

    # -- toward the peer ---------------------------------------------------------------------------------
    def send(self, frame: bytes) -> bool:
        if self.sock is None:
            self.dropped_out += 1              # no peer: the frame is lost, as on an unplugged cable
            return True
        self._out += _LEN.pack(len(frame))
        self._out += frame
        self.frames_out += 1
        if len(self._out) >= OUT_LIMIT // 4:
            self._flush()
        return len(self._out) < OUT_LIMIT

    def flush(self) -> None:
        if self._out and not self._writer:
            self._flush()

    def _flush(self) -> None:
        sock = self.sock
        while self._out and sock is not None:
            try:
                n = sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.detach(f"{self.name}: {e.strerror or e}; link down")
                return
            del self._out[:n]
        if sock is None or self.loop is None:
            return
        if self._out and not self._writer:
            self._writer = True
            self.loop.add_writer(sock.fileno(), self._on_writable)
        elif not self._out and self._writer:
            self._writer = False
            self.loop.remove_writer(sock.fileno())

    def _on_writable(self) -> None:
        was_full = len(self._out) >= OUT_LIMIT
        self._flush()
        if was_full and len(self._out) < OUT_LIMIT:
            self.on_writable()

    def close(self) -> None:
        self.detach(None)


class SocketLink(StreamLink):
    """`--net socket:PATH`: connect to an existing socket, or listen on PATH when nothing is there."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.name = f"socket:{path}"
        self.listener: Optional[socket.socket] = None

    def start(self, loop: HostLoop) -> None:
        self.loop = loop
        if os.path.exists(self.path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
            except OSError as e:
                s.close()
                raise LinkError(f"--net socket:{self.path}: cannot connect: {e.strerror or e}") from None
            self.attach(s)
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(self.path)
            s.listen(1)
        except OSError as e:
            s.close()
            raise LinkError(f"--net socket:{self.path}: cannot listen: {e.strerror or e}") from None
        s.setblocking(False)
        self.listener = s
        loop.add_reader(s.fileno(), self._accept)

    def _accept(self) -> None:
        if self.listener is None:
            return
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.report(f"{self.name}: accept: {e.strerror or e}")
            return
        if self.sock is not None:
            conn.close()                        # one peer at a time
            return
        self.attach(conn)

    def close(self) -> None:
        self.detach(None)
        listener, self.listener = self.listener, None
        if listener is not None:
            if self.loop is not None and not self.loop.closed:
                self.loop.remove_reader(listener.fileno())
            listener.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    @property
    def waits_for_host(self) -> bool:
        return True


PASST = "passt"
PASST_START_TIMEOUT = 10.0


class PasstLink(StreamLink):
    """`--net user`: a passt process for this vif. It gives the guest DHCP, DNS, and TCP/UDP/ICMP to the
    host and beyond; its gateway address stands for the host's loopback."""

    name = "passt"

    def __init__(self, program: str = PASST, extra_args: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.program = program
        self.extra_args = tuple(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.dir: Optional[str] = None

    def command(self, sock_path: str, log_path: str) -> list[str]:
        # -f: foreground, so we own its lifetime; -1: quit when we disconnect; -s: our private socket;
        # -t/-u none: no port forwarded from the host (no listening sockets); a log file, not syslog.
        return [self.program, "-f", "-1", "-s", sock_path, "-t", "none", "-u", "none",
                "-l", log_path, "--log-size", str(1 << 20), *self.extra_args]

    def start(self, loop: HostLoop) -> None:
        self.loop = loop
        path = shutil.which(self.program)
        if path is None:
            raise LinkError(f"--net user needs passt (Debian package `passt`): `{self.program}` not found")
        self.dir = tempfile.mkdtemp(prefix="miniguest-passt-")
        sock_path = os.path.join(self.dir, "passt.socket")
        log_path = os.path.join(self.dir, "passt.log")
        try:
            self.proc = subprocess.Popen(self.command(sock_path, log_path), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True)
        except OSError as e:
            self._cleanup()
            raise LinkError(f"--net user: cannot start passt: {e.strerror or e}") from None
        deadline = time.monotonic() + PASST_START_TIMEOUT
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            if self.proc.poll() is not None:
                s.close()
                why = self._why(log_path)
                self._cleanup()
                raise LinkError(f"--net user: passt exited at start{why}")
            try:
                s.connect(sock_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    s.close()
                    self.close()
                    raise LinkError(f"--net user: passt did not open its socket within "
                                    f"{PASST_START_TIMEOUT:.0f} s") from None
                time.sleep(0.01)
            except OSError as e:
                s.close()
                self.close()
                raise LinkError(f"--net user: cannot connect to passt: {e.strerror or e}") from None
        self.attach(s)

    def _why(self, log_path: str) -> str:
        text = b""
        if self.proc is not None and self.proc.stderr is not None:
            try:
                text = self.proc.stderr.read(4096) or b""
            except OSError:
                pass
        if not text.strip():
            try:
                with open(log_path, "rb") as f:
                    text = f.read()[-4096:]
            except OSError:
                pass
        lines = [ln.strip() for ln in text.decode("utf-8", "replace").splitlines() if ln.strip()]
        return f": {lines[-1]}" if lines else f" (status {self.proc.returncode if self.proc else '?'})"

    def disconnected(self) -> None:
        self._stop_process()

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.wait(timeout=1.0)          # -1: passt quits once we have disconnected
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def _cleanup(self) -> None:
        d, self.dir = self.dir, None
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        self.detach(None)
        self._stop_process()
        self._cleanup()


def parse_link(spec: str) -> Link:
    """The host side named by `--net`'s first word: user | socket:PATH | none."""
    if spec == "user":
        return PasstLink()
    if spec.startswith("socket:") and len(spec) > 7:
        return SocketLink(spec[7:])
    if spec == "none":
        return NullLink()
    raise LinkError(f"unknown network host side {spec!r} (user, socket:PATH or none)")
