"""The dom0 Unix socket: the same wire protocol as the rings, for tools (xenstore-ls, libxenstore, our client).

Like C xenstored's socket, every client is privileged (dom0), so the socket's file permissions are the security
boundary: it is created mode 0600 (C xenstored's chmod), for the user running miniguest only. All descriptors are
non-blocking and registered with the HostLoop; nothing here blocks or starts a thread. A client that announces a
payload over XENSTORE_PAYLOAD_MAX is disconnected; the others are unaffected. A client that does not read its
replies is not read from (flow control, Connection.output_full), and one that lets its watch events pile up past
the memory quota is disconnected.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import xs_wire as W

from .connection import HEADER, Connection

if TYPE_CHECKING:
    from miniguest.hypervisor.host import HostLoop

    from .daemon import XenstoreDaemon

log = logging.getLogger(__name__)

_RECV_SIZE = 65536


class SocketConnection(Connection):
    """One client of the socket. Input is read only while the client consumes its output (`output_full()`):
    a client that floods requests and never reads costs us at most the quota of queued replies plus one
    receive buffer, and everything it holds is freed when it goes."""

    def __init__(self, daemon: "XenstoreDaemon", sock: socket.socket, loop: "HostLoop",
                 server: Optional["SocketServer"] = None) -> None:
        super().__init__(daemon, 0, privileged=True)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.server = server
        self._in = bytearray()
        self._reading = True
        self._writer = False
        self._resume_pending = False
        self._overflow = False
        sock.setblocking(False)
        loop.add_reader(self.fd, self._on_readable)

    # -- input -------------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        if self.closed:
            return
        if self.output_full():
            self._stop_reading()
            return
        try:
            data = self.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            self.daemon.flush_dirty()
            return
        self._in += data
        self._process()
        self.daemon.flush_dirty()

    def _process(self) -> None:
        """Handle the complete requests in the input buffer until it is empty or the output is full."""
        try:
            while len(self._in) >= HEADER.size and not self.closed:
                if self.output_full():
                    self.flush()            # what the kernel takes no longer counts against the client
                    if self.closed:
                        return
                    if self.output_full():
                        self._stop_reading()
                        return
                msg_type, req_id, tx_id, length = HEADER.unpack_from(self._in)
                if length > W.XENSTORE_PAYLOAD_MAX:
                    log.warning("xenstore socket client sent a %d-byte payload; dropping it", length)
                    self.close()
                    return
                end = HEADER.size + length
                if len(self._in) < end:
                    break
                payload = bytes(self._in[HEADER.size:end])
                del self._in[:end]
                self.handle(msg_type, req_id, tx_id, payload)
        except Exception:
            log.exception("xenstore socket: internal error; dropping client")
            self.close()
            return
        self._start_reading()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop_call(self.loop.remove_reader, self.fd)

    def _start_reading(self) -> None:
        if not self._reading and not self.closed:
            self._reading = True
            self._loop_call(self.loop.add_reader, self.fd, self._on_readable)

    def _resume(self) -> None:
        """Output drained below the limits while reading was stopped: handle what is buffered, read again."""
        self._resume_pending = False
        if self.closed or self._reading or self.output_full():
            return
        self._process()
        self.daemon.flush_dirty()

    # -- output ------------------------------------------------------------------------------------------
    def overflowed(self) -> None:
        """Watch events over the quota for a client that does not read: tell it by disconnecting (from
        `flush`, not here: we are inside fire_watches) rather than silently losing its events."""
        if not self._overflow:
            self._overflow = True
            log.warning("xenstore socket client does not consume its watch events; disconnecting it")
            self.daemon.mark_dirty(self)

    def flush(self) -> None:
        if self.closed:
            return
        if self._overflow:
            self.close()
            return
        while self.out:
            head = self.out[0]
            try:
                n = self.sock.send(head.data[self.out_pos:])
            except (BlockingIOError, InterruptedError):
                self._want_write()
                break
            except OSError:
                self.close()
                return
            self.sent(n)
        if self._writer and not self.out:
            self._writer = False
            self._loop_call(self.loop.remove_writer, self.fd)
        if not self._reading and not self._resume_pending and not self.output_full():
            # Resume on the loop, not inside the daemon's flush (we may be in another client's request).
            self._resume_pending = True
            self.loop.call_soon(self._resume)

    def _want_write(self) -> None:
        """The client is not reading: send the rest when its socket is writable again."""
        if not self._writer:
            self._writer = True
            self._loop_call(self.loop.add_writer, self.fd, self._on_writable)

    def _on_writable(self) -> None:
        self.flush()
        self.daemon.flush_dirty()

    # -- teardown ----------------------------------------------------------------------------------------
    def _loop_call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # the loop may already be closed at shutdown
            pass

    def close(self) -> None:
        """Disconnect and free everything the client made us hold (queues, input, watches, transactions)."""
        if self.closed:
            return
        self.closed = True
        self._loop_call(self.loop.remove_reader, self.fd)
        if self._writer:
            self._loop_call(self.loop.remove_writer, self.fd)
        self._reading = self._writer = False
        try:
            self.sock.close()
        except OSError:
            pass
        self.drop_state()
        self._in = bytearray()
        self.daemon.remove_connection(self)
        if self.server is not None:
            self.server.forget(self)


class SocketServer:
    """The listening socket; accepts clients on the loop thread."""

    def __init__(self, daemon: "XenstoreDaemon", path: str, loop: "HostLoop") -> None:
        self.daemon = daemon
        self.path = path
        self.loop = loop
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket of an earlier run
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)
            os.chmod(path, 0o600)
            self.sock.listen(64)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.clients: list[SocketConnection] = []
        self._paused = False
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            client, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of descriptors: the pending connection keeps the socket readable, so stop listening
                # (instead of spinning) until one of our clients goes.
                log.warning("xenstore socket: cannot accept: %s", err)
                if not self._paused:
                    self._paused = True
                    self.loop.remove_reader(self.sock.fileno())
            return
        conn = SocketConnection(self.daemon, client, self.loop, self)
        self.daemon.add_connection(conn)
        self.clients.append(conn)

    def forget(self, conn: SocketConnection) -> None:
        try:
            self.clients.remove(conn)
        except ValueError:
            pass
        if self._paused and self.sock.fileno() >= 0:
            self._paused = False
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        self._paused = False
        for conn in list(self.clients):
            conn.close()
        try:
            self.loop.remove_reader(self.sock.fileno())
        except Exception:
            pass
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
