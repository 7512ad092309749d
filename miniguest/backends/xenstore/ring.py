"""The server side of one domain's xenstore ring page (xenstore_domain_interface, io/xs_wire.h).

Everything on the page is written by a guest we do not trust. Indexes are free-running u32s read once per
step and checked: more than XENSTORE_RING_SIZE bytes between consumer and producer is XENSTORE_ERROR_RINGIDX,
a header announcing more than XENSTORE_PAYLOAD_MAX bytes is XENSTORE_ERROR_PROTO. Either stops service for
this domain only (the error field tells the guest why) until it asks to reconnect. We read a message only as
far as it has arrived and resume on the next notification; replies that do not fit wait in a queue and go out
as the guest consumes. A guest with `outstanding` unconsumed replies (or `memory` bytes of queued output) is not
read from until it consumes some, which bounds what it can make us buffer (XSA-326/416).
"""
from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Callable

from miniguest.abi import xs_wire as W
from miniguest.hypervisor.save import Fields, latin1, unlatin1

from .connection import HEADER, Connection

if TYPE_CHECKING:
    from .daemon import XenstoreDaemon

log = logging.getLogger(__name__)

_U32 = struct.Struct("<I")
_MASK = 0xFFFFFFFF
_SIZE = W.XENSTORE_RING_SIZE
SERVER_FEATURES = W.XENSTORE_SERVER_FEATURE_RECONNECTION | W.XENSTORE_SERVER_FEATURE_ERROR


class RingError(Exception):
    """Internal: the guest broke the ring protocol; carries the XENSTORE_ERROR_* code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class RingConnection(Connection):
    """Serves one domain's ring. The hypervisor calls `on_event()` whenever the guest notifies."""

    def __init__(self, daemon: "XenstoreDaemon", domid: int, page: memoryview,
                 notify: Callable[[], None]) -> None:
        super().__init__(daemon, domid, privileged=(domid == 0))
        view = memoryview(page)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if len(view) < 4096 or view.readonly:
            raise ValueError("the xenstore ring needs a writable 4096-byte page")
        self.page = view
        self.notify = notify
        self.error = W.XENSTORE_ERROR_NONE
        self._in = bytearray()
        self._kick = False
        # Advertise before producing or consuming anything (xenstore-ring.txt); bits are never cleared.
        self._put(W.XS_SERVER_FEATURES, self._get(W.XS_SERVER_FEATURES) | SERVER_FEATURES)

    # -- page access -------------------------------------------------------------------------------------
    def _get(self, off: int) -> int:
        return _U32.unpack_from(self.page, off)[0]

    def _put(self, off: int, value: int) -> None:
        _U32.pack_into(self.page, off, value & _MASK)

    # -- entry point -------------------------------------------------------------------------------------
    def on_event(self) -> None:
        """The guest notified its store port. Never raises, whatever the page holds."""
        try:
            self._service()
        except Exception:  # a bug of ours must not become the hypervisor's exception
            log.exception("xenstore ring of domain %d: internal error; connection stopped", self.domid)
            self._fail(W.XENSTORE_ERROR_COMM)
        try:
            self.daemon.flush_dirty()
        except Exception:
            log.exception("xenstore: error while flushing output")

    def _service(self) -> None:
        if self.closed:
            return
        if self._get(W.XS_CONNECTION) == W.XENSTORE_RECONNECT:
            self.reset_ring()
            return
        if self.error:
            return
        try:
            self._write_out()
            self._read_in()
        except RingError as err:
            self._fail(err.code)

    def reset_ring(self) -> None:
        """Reconnection (xenstore-ring.txt): drop partial packets, queues, watches and transactions, empty
        both rings, mark the ring connected and notify. Also lifts a previous error stop."""
        self.drop_state()
        self._in.clear()
        self.error = W.XENSTORE_ERROR_NONE
        for off in (W.XS_REQ_CONS, W.XS_REQ_PROD, W.XS_RSP_CONS, W.XS_RSP_PROD, W.XS_ERROR_FIELD):
            self._put(off, 0)
        self._put(W.XS_SERVER_FEATURES, self._get(W.XS_SERVER_FEATURES) | SERVER_FEATURES)
        self._put(W.XS_CONNECTION, W.XENSTORE_CONNECTED)
        self._notify()

    def _fail(self, code: int) -> None:
        """Stop serving this domain (C xenstored's ignore_connection): error field set, state dropped."""
        log.warning("xenstore ring of domain %d: protocol error %d, connection stopped", self.domid, code)
        self.error = code
        self.drop_state()
        self._in.clear()
        try:
            self._put(W.XS_ERROR_FIELD, code)
        except Exception:
            pass
        self._notify()

    def _notify(self) -> None:
        self._kick = False
        try:
            self.notify()
        except Exception:
            log.exception("xenstore: notify of domain %d failed", self.domid)

    # -- input -------------------------------------------------------------------------------------------
    def _read(self, want: int) -> bytes:
        """Up to `want` bytes from the request ring (wrapping as needed)."""
        cons = self._get(W.XS_REQ_CONS)
        prod = self._get(W.XS_REQ_PROD)
        avail = (prod - cons) & _MASK
        if avail > _SIZE:
            raise RingError(W.XENSTORE_ERROR_RINGIDX)
        n = min(want, avail)
        if n == 0:
            return b""
        start = cons % _SIZE
        first = min(n, _SIZE - start)
        data = bytes(self.page[W.XS_REQ + start:W.XS_REQ + start + first])
        if first < n:
            data += bytes(self.page[W.XS_REQ:W.XS_REQ + n - first])
        self._put(W.XS_REQ_CONS, cons + n)
        self._kick = True
        return data

    def _read_in(self) -> None:
        while not self.error and not self.closed:
            if self.output_full():
                return  # wait until the guest consumes replies (it notifies when it does)
            have = len(self._in)
            if have < HEADER.size:
                need = HEADER.size - have
            else:
                need = HEADER.size + HEADER.unpack_from(self._in)[3] - have
            if need:
                chunk = self._read(need)
                if not chunk:
                    return
                self._in += chunk
                if len(self._in) == HEADER.size and HEADER.unpack_from(self._in)[3] > W.XENSTORE_PAYLOAD_MAX:
                    raise RingError(W.XENSTORE_ERROR_PROTO)
                if len(chunk) < need:
                    return
                if len(self._in) == HEADER.size and HEADER.unpack_from(self._in)[3]:
                    continue  # header complete, payload still to read
            msg_type, req_id, tx_id, length = HEADER.unpack_from(self._in)
            payload = bytes(self._in[HEADER.size:HEADER.size + length])
            self._in.clear()
            self.handle(msg_type, req_id, tx_id, payload)
            self._write_out()

    # -- output ------------------------------------------------------------------------------------------
    def _write_out(self) -> None:
        while self.out:
            cons = self._get(W.XS_RSP_CONS)
            prod = self._get(W.XS_RSP_PROD)
            used = (prod - cons) & _MASK
            if used > _SIZE:
                raise RingError(W.XENSTORE_ERROR_RINGIDX)
            free = _SIZE - used
            if free == 0:
                return
            head = self.out[0]
            chunk = head.data[self.out_pos:self.out_pos + free]
            start = prod % _SIZE
            first = min(len(chunk), _SIZE - start)
            self.page[W.XS_RSP + start:W.XS_RSP + start + first] = chunk[:first]
            if first < len(chunk):
                self.page[W.XS_RSP:W.XS_RSP + len(chunk) - first] = chunk[first:]
            self._put(W.XS_RSP_PROD, prod + len(chunk))
            self._kick = True
            self.sent(len(chunk))

    def flush(self) -> None:
        """Called by the daemon when output is queued (e.g. a watch fired by another domain's write)."""
        if self.closed:
            return
        if not self.error:
            try:
                self._write_out()
            except RingError as err:
                self._fail(err.code)
                return
        if self._kick:
            self._notify()

    # -- saved state: the connection's, plus the partly read request and the ring's own flags ---------------
    def save(self) -> dict:
        return dict(super().save(), input=latin1(self._in), error=self.error, kick=self._kick)

    def restore(self, f: Fields) -> None:
        super().restore(f)
        self._in = bytearray(unlatin1(f.str("input"), f"{f.where}.input"))
        self.error = f.int("error", 0, 255)
        self._kick = f.bool("kick")

    def close(self) -> None:
        """The domain was released: stop serving for good."""
        self.closed = True
        self.drop_state()
        self._in.clear()
