"""The guest's half of a xenstore ring, in Python: what Mini-OS's xenbus driver does, for tests and benchmarks.

It plays by the rules by default but lets a test break them at will (raw bytes, bad indexes, partial
messages). It talks to the server only through the page and by calling the server's `on_event()`, which is
what the hypervisor does when the guest notifies its store port.
"""
from __future__ import annotations

import struct
from typing import Callable, Optional

from miniguest.abi import xs_wire as W

_U32 = struct.Struct("<I")
_HDR = struct.Struct("<IIII")
_SIZE = W.XENSTORE_RING_SIZE


class GuestRing:
    def __init__(self, page: Optional[bytearray] = None, start_index: int = 0) -> None:
        self.buf = page if page is not None else bytearray(4096)
        self.page = memoryview(self.buf)
        self.notified = 0          # times the server raised our event channel
        self.server_event: Callable[[], None] = lambda: None   # set to conn.on_event
        self._rx = bytearray()
        self._pending: list[tuple[int, int, int, bytes]] = []
        self._req_id = 0
        for off in (W.XS_REQ_CONS, W.XS_REQ_PROD, W.XS_RSP_CONS, W.XS_RSP_PROD):
            self.put(off, start_index)

    def notify(self) -> None:
        """The server's notify callback (our store event channel)."""
        self.notified += 1

    def get(self, off: int) -> int:
        return _U32.unpack_from(self.page, off)[0]

    def put(self, off: int, value: int) -> None:
        _U32.pack_into(self.page, off, value & 0xFFFFFFFF)

    # -- raw byte streams --------------------------------------------------------------------------------
    def free(self) -> int:
        return _SIZE - ((self.get(W.XS_REQ_PROD) - self.get(W.XS_REQ_CONS)) & 0xFFFFFFFF)

    def push(self, data: bytes, *, kick: bool = True) -> int:
        """Write as much of `data` as fits into the request ring; returns bytes written."""
        prod = self.get(W.XS_REQ_PROD)
        n = min(len(data), self.free())
        for i in range(n):
            self.page[W.XS_REQ + (prod + i) % _SIZE] = data[i]
        self.put(W.XS_REQ_PROD, prod + n)
        if kick:
            self.server_event()
        return n

    def pull(self) -> bytes:
        """Consume everything in the response ring."""
        cons = self.get(W.XS_RSP_CONS)
        prod = self.get(W.XS_RSP_PROD)
        n = (prod - cons) & 0xFFFFFFFF
        out = bytes(self.page[W.XS_RSP + (cons + i) % _SIZE] for i in range(n))
        self.put(W.XS_RSP_CONS, cons + n)
        return out

    # -- messages ----------------------------------------------------------------------------------------
    def send_all(self, data: bytes) -> None:
        """Push `data` completely, letting the server drain the ring (and consuming replies) as needed."""
        while data:
            n = self.push(data)
            data = data[n:]
            self._rx += self.pull()
            if n == 0 and data:
                self.server_event()
                if self.free() == 0:
                    raise RuntimeError("server does not consume the request ring")

    def send(self, msg_type: int, payload: bytes, tx_id: int = 0, req_id: Optional[int] = None) -> int:
        if req_id is None:
            self._req_id += 1
            req_id = self._req_id
        self.send_all(_HDR.pack(msg_type, req_id, tx_id, len(payload)) + payload)
        return req_id

    def messages(self) -> list[tuple[int, int, int, bytes]]:
        """All complete messages received so far: (type, req_id, tx_id, payload)."""
        self._rx += self.pull()
        out, self._pending = self._pending, []
        while len(self._rx) >= _HDR.size:
            t, r, x, n = _HDR.unpack_from(self._rx)
            if len(self._rx) < _HDR.size + n:
                break
            out.append((t, r, x, bytes(self._rx[_HDR.size:_HDR.size + n])))
            del self._rx[:_HDR.size + n]
        return out

    def request(self, msg_type: int, payload: bytes, tx_id: int = 0,
                events: Optional[list[tuple[bytes, bytes]]] = None) -> tuple[int, bytes]:
        """Send one request and return (reply type, payload); watch events seen meanwhile go to `events`."""
        req_id = self.send(msg_type, payload, tx_id)
        for _ in range(10000):
            msgs = self.messages()
            for i, (t, r, x, body) in enumerate(msgs):
                if t != W.XS_WATCH_EVENT and r == req_id:
                    rest = msgs[:i] + msgs[i + 1:]
                    if events is not None:
                        events.extend(tuple(m[3].split(b"\0")[:2]) for m in rest  # type: ignore[misc]
                                      if m[0] == W.XS_WATCH_EVENT)
                        rest = [m for m in rest if m[0] != W.XS_WATCH_EVENT]
                    self._pending = rest + self._pending
                    return t, body
            self._pending = msgs + self._pending
            self.server_event()   # tell the server we consumed output
        raise RuntimeError("no reply")

    def call(self, msg_type: int, *args: bytes | str, tx_id: int = 0) -> bytes:
        """Request with NUL-terminated string args; returns the payload or raises RuntimeError(errno name)."""
        payload = b"".join((a.encode() if isinstance(a, str) else a) + b"\0" for a in args)
        t, body = self.request(msg_type, payload, tx_id)
        if t == W.XS_ERROR:
            raise RuntimeError(body.rstrip(b"\0").decode())
        return body
