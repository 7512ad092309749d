"""The dom0 Unix socket: the same wire protocol as the rings, for tools (xenstore-ls, libxenstore, our client).

Like C xenstored's socket, every client is privileged (dom0). All descriptors are non-blocking and registered
with the HostLoop; nothing here blocks or starts a thread. A client that announces a payload over
XENSTORE_PAYLOAD_MAX is disconnected; the others are unaffected.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING

from miniguest.abi import xs_wire as W

from .connection import HEADER, Connection

if TYPE_CHECKING:
    from miniguest.hypervisor.hostloop import HostLoop

    from .daemon import XenstoreDaemon

log = logging.getLogger(__name__)

_RECV_SIZE = 65536


class SocketConnection(Connection):
    def __init__(self, daemon: "XenstoreDaemon", sock: socket.socket, loop: "HostLoop") -> None:
        super().__init__(daemon, 0, privileged=True)
        self.sock = sock
        self.loop = loop
        self._in = bytearray()
        self._writer = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
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
        try:
            while len(self._in) >= HEADER.size and not self.closed:
                msg_type, req_id, tx_id, length = HEADER.unpack_from(self._in)
                if length > W.XENSTORE_PAYLOAD_MAX:
                    log.warning("xenstore socket client sent a %d-byte payload; dropping it", length)
                    self.close()
                    break
                end = HEADER.size + length
                if len(self._in) < end:
                    break
                payload = bytes(self._in[HEADER.size:end])
                del self._in[:end]
                self.handle(msg_type, req_id, tx_id, payload)
        except Exception:
            log.exception("xenstore socket: internal error; dropping client")
            self.close()
        self.daemon.flush_dirty()

    def flush(self) -> None:
        while self.out and not self.closed:
            head = self.out[0]
            try:
                n = self.sock.send(head.data[self.out_pos:])
            except (BlockingIOError, InterruptedError):
                self._want_write()
                return
            except OSError:
                self.close()
                return
            self.sent(n)
        if self._writer and not self.out:
            self._writer = False
            remove = getattr(self.loop, "remove_writer", None)
            if remove is not None:
                remove(self.sock.fileno())

    def _want_write(self) -> None:
        """The client is not reading. HostLoop may offer add_writer; without it the rest goes out the next
        time this client sends something (clients that stop reading only hurt themselves)."""
        add = getattr(self.loop, "add_writer", None)
        if add is not None and not self._writer:
            self._writer = True
            add(self.sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        self.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.remove_reader(self.sock.fileno())
            if self._writer:
                remove = getattr(self.loop, "remove_writer", None)
                if remove is not None:
                    remove(self.sock.fileno())
        except Exception:  # the loop may already be closed at shutdown
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.drop_state()
        self.daemon.remove_connection(self)


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
            self.sock.listen(64)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.clients: list[SocketConnection] = []
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            client, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE):
                log.warning("xenstore socket: cannot accept: %s", err)
            return
        conn = SocketConnection(self.daemon, client, self.loop)
        self.daemon.add_connection(conn)
        self.clients = [c for c in self.clients if not c.closed]
        self.clients.append(conn)

    def close(self) -> None:
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
