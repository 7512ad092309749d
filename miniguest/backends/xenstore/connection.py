"""One client of the daemon and the request handlers of the wire protocol.

A Connection is what C xenstored calls a connection: a ring to one domain or a socket from a dom0 tool. It owns
its watches, its open transactions and its queue of outgoing messages. Requests arrive as complete messages
(the transports deal with bytes); every request produces exactly one reply, an XS_ERROR with the errno name
when it fails, echoing req_id and tx_id. Guest-controlled input can only ever produce an errno here: handlers
raise XenstoreError and `handle` turns it into the reply.
"""
from __future__ import annotations

import logging
import re
import struct
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import errno as E
from miniguest.abi import xs_wire as W
from miniguest.hypervisor.save import Fields, StateError, latin1, unlatin1

from .errors import XenstoreError
from .paths import canonicalize, domain_path
from .perms import parse_perms
from .store import Transaction
from .watches import Watch

if TYPE_CHECKING:
    from .daemon import XenstoreDaemon

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IIII")
assert HEADER.size == W.XSD_SOCKMSG_SIZE

#: DOMID_SELF from xen.h, which IS_DOMAIN_INTRODUCED answers "T" for
DOMID_SELF = 0x7FF0

#: The errno names xs_wire.h's xsd_errors table lets travel on the wire; anything else goes out as EINVAL,
#: as C xenstored's send_error does. (Not in abi/xs_wire.py yet, hence here.)
XSD_ERRORS = frozenset({"EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
                        "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM"})


def pack(msg_type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    return HEADER.pack(msg_type, req_id & 0xFFFFFFFF, tx_id & 0xFFFFFFFF, len(payload)) + payload


def onearg(payload: bytes) -> Optional[bytes]:
    """The single NUL-terminated argument, or None unless the payload's only NUL is its last byte."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of a payload; bytes after the last NUL are ignored (C's get_strings)."""
    parts = payload.split(b"\0")
    return parts[:-1]


_ATOI = re.compile(rb"\s*([+-]?[0-9]+)")


def atoi(arg: bytes) -> int:
    """C's atoi as xenstored uses it for domids: leading number or 0, taken as unsigned 32-bit."""
    m = _ATOI.match(arg)
    if m is None:
        return 0
    value = max(-(2 ** 31), min(int(m.group(1)), 2 ** 31 - 1))
    return value & 0xFFFFFFFF


@dataclass
class _Out:
    data: bytes
    is_event: bool


Handler = Callable[["Connection", int, Optional[Transaction], bytes], tuple[int, bytes]]

_OK = b"OK\0"


class Connection:
    """State shared by every kind of client: identity, watches, transactions and the output queue."""

    def __init__(self, daemon: "XenstoreDaemon", domid: int, privileged: bool) -> None:
        self.daemon = daemon
        self.domid = domid
        self.privileged = privileged
        self.target: Optional[int] = None
        self.watches: list[Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self._next_tx_id = 1
        self.out: deque[_Out] = deque()
        self.out_pos = 0           # bytes of out[0] already sent
        self.out_bytes = 0         # bytes queued in total
        self.outstanding = 0       # replies queued and not fully sent
        self._queued_events: dict[bytes, int] = {}   # for collapsing duplicate pending events
        self.closed = False
        self._overflow_logged = False
        self._after_reply: list[Callable[[], None]] = []

    # -- output --------------------------------------------------------------------------------------------
    def _queue(self, data: bytes, is_event: bool) -> None:
        for hook in self.daemon.message_hooks:      # tracing (miniguest.regress): every reply and watch event
            msg_type, req_id, tx_id, _ = HEADER.unpack_from(data)
            hook(self, "event" if is_event else "reply", msg_type, req_id, tx_id, data[HEADER.size:])
        self.out.append(_Out(data, is_event))
        self.out_bytes += len(data)
        if is_event:
            self._queued_events[data] = self._queued_events.get(data, 0) + 1
        else:
            self.outstanding += 1
        self.daemon.mark_dirty(self)

    def output_full(self) -> bool:
        """Flow control: True while the client is not consuming what we queued for it, so its transport stops
        reading requests (C xenstored's domain_can_read: outstanding replies or memory over quota;
        oxenstored's can_input for every connection). It applies to privileged clients too, with
        oxenstored's larger reply count: a dom0 tool that never reads cannot make us buffer without bound."""
        q = self.daemon.quotas
        limit = q.outstanding_privileged if self.privileged else q.outstanding
        return self.outstanding >= limit or self.out_bytes >= q.memory

    def queue_event(self, path: str, token: bytes) -> None:
        """Queue a WATCH_EVENT (req_id and tx_id 0). Identical pending events collapse into one; events are
        dropped, as C xenstored drops them, when they would not fit a payload or the memory quota. A
        privileged connection over the quota is `overflowed()` instead (a socket client is disconnected)."""
        payload = path.encode("ascii") + b"\0" + token + b"\0"
        if len(payload) > W.XENSTORE_PAYLOAD_MAX:
            return
        data = pack(W.XS_WATCH_EVENT, 0, 0, payload)
        if not path.startswith("@") and data in self._queued_events:
            return
        if self.out_bytes + len(data) > self.daemon.quotas.memory:
            if self.privileged:
                self.overflowed()
            return
        self._queue(data, True)

    def overflowed(self) -> None:
        """A privileged client's queued output reached the memory quota and a watch event had to be dropped.
        Transports that can tell the client (a socket: disconnect) override this; it must not close the
        connection at once (we are inside fire_watches), only arrange it from `flush()`."""
        if not self._overflow_logged:
            self._overflow_logged = True
            log.warning("xenstore: dom%d is not consuming its watch events; dropping events", self.domid)

    def watch_fired(self, watch: Watch, name: str) -> None:
        """`watch` matched a change of `name` (also the initial firing on registration)."""
        self.queue_event(watch.event_path(name), watch.token)

    def sent(self, nbytes: int) -> None:
        """The transport sent `nbytes` from the head of the queue."""
        while nbytes and self.out:
            head = self.out[0]
            take = min(nbytes, len(head.data) - self.out_pos)
            self.out_pos += take
            nbytes -= take
            if self.out_pos == len(head.data):
                self.out.popleft()
                self.out_pos = 0
                self.out_bytes -= len(head.data)
                if not head.is_event:
                    self.outstanding -= 1
                else:
                    left = self._queued_events.pop(head.data) - 1
                    if left:
                        self._queued_events[head.data] = left

    def flush(self) -> None:
        """Push queued output to the transport; subclasses implement it."""

    # -- saved state (hypervisor/save.py): watches, transactions, queued output ---------------------------
    def save(self) -> dict:
        return {"watches": [w.save() for w in self.watches],
                "transactions": [tx.save() for tx in self.transactions.values()],
                "next_tx_id": self._next_tx_id,
                "out": [[latin1(o.data), o.is_event] for o in self.out], "out_pos": self.out_pos,
                "closed": self.closed, "target": self.target}

    def restore(self, f: Fields) -> None:
        self.watches = [Watch.from_saved(w, f"{f.where}.watches[{i}]")
                        for i, w in enumerate(f.list("watches", 1 << 16))]
        self.transactions = {}
        for i, t in enumerate(f.list("transactions", 1 << 16)):
            tx = Transaction.from_saved(t, self, f"{f.where}.transactions[{i}]")
            self.transactions[tx.id] = tx
        self._next_tx_id = f.int("next_tx_id", 0, 0xFFFFFFFF)
        self.out = deque()
        self._queued_events = {}
        self.out_bytes = self.outstanding = 0
        for i, o in enumerate(f.list("out", 1 << 16)):
            if not (isinstance(o, list) and len(o) == 2 and isinstance(o[0], str) and isinstance(o[1], bool)):
                raise StateError(f"{f.where}.out[{i}] must be [data, is_event]")
            data = unlatin1(o[0], f"{f.where}.out[{i}]")
            self.out.append(_Out(data, o[1]))
            self.out_bytes += len(data)
            if o[1]:
                self._queued_events[data] = self._queued_events.get(data, 0) + 1
            else:
                self.outstanding += 1
        self.out_pos = f.int("out_pos", 0, len(self.out[0].data) if self.out else 0)
        self.closed = f.bool("closed")
        self.target = f.int("target", 0, 0xFFFF, optional=True)

    # -- state -----------------------------------------------------------------------------------------
    def drop_state(self) -> None:
        """Forget watches, transactions and queued output (reconnect, error, close)."""
        self.watches.clear()
        self.transactions.clear()
        self.out.clear()
        self._queued_events.clear()
        self.out_pos = self.out_bytes = self.outstanding = 0

    @property
    def implicit_path(self) -> str:
        return domain_path(self.domid)

    def canon(self, path: bytes, allow_special: bool = False) -> tuple[str, bool]:
        return canonicalize(path, self.domid, allow_special=allow_special,
                            path_max=self.daemon.quotas.path_max)

    # -- requests ----------------------------------------------------------------------------------------
    def handle(self, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None:
        """Process one complete request and queue its reply (and any watch events it causes)."""
        entry = _HANDLERS.get(msg_type)
        try:
            # Message hooks (tracing, fault injection: miniguest.regress) see each request; a hook returning
            # an errno name fails the request with it instead of handling it.
            for hook in self.daemon.message_hooks:
                injected = hook(self, "request", msg_type, req_id, tx_id, payload)
                if injected:
                    raise XenstoreError(injected)
            if entry is None:
                raise XenstoreError(E.ENOSYS)
            func, priv, notid = entry
            if priv and not self.privileged:
                raise XenstoreError(E.EACCES)
            tx: Optional[Transaction] = None
            if not notid and tx_id != 0:
                tx = self.transactions.get(tx_id)
                if tx is None:
                    raise XenstoreError(E.ENOENT)
            reply_type, body = func(self, tx_id, tx, payload)
            if len(body) > W.XENSTORE_PAYLOAD_MAX:
                raise XenstoreError(E.E2BIG)
        except XenstoreError as err:
            name = err.name if err.name in XSD_ERRORS else "EINVAL"
            reply_type, body = W.XS_ERROR, name.encode("ascii") + b"\0"
            self._after_reply.clear()
        self._queue(pack(reply_type, req_id, tx_id, body), False)
        after, self._after_reply = self._after_reply, []
        for fn in after:
            fn()

    # handlers: (conn, tx_id, tx, payload) -> (reply type, reply payload)
    def _path_arg(self, payload: bytes, allow_special: bool = False) -> str:
        arg = onearg(payload)
        if arg is None:
            raise XenstoreError(E.EINVAL)
        return self.canon(arg, allow_special)[0]

    def do_read(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        return W.XS_READ, self.daemon.store.read(self, self._path_arg(payload), tx)

    def do_write(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        cut = payload.find(b"\0")
        if cut < 0:
            raise XenstoreError(E.EINVAL)
        name = self.canon(payload[:cut])[0]
        self.daemon.store.write(self, name, payload[cut + 1:], tx)
        return W.XS_WRITE, _OK

    def do_mkdir(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        self.daemon.store.mkdir(self, self._path_arg(payload), tx)
        return W.XS_MKDIR, _OK

    def do_rm(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        self.daemon.store.rm(self, self._path_arg(payload), tx)
        return W.XS_RM, _OK

    def do_directory(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        node = self.daemon.store.get_node(self, self._path_arg(payload), tx)
        return W.XS_DIRECTORY, node.children_bytes()

    def do_directory_part(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        if payload.count(b"\0") != 2:
            raise XenstoreError(E.EINVAL)
        first, second = strings(payload)
        node = self.daemon.store.get_node(self, self.canon(first)[0], tx)
        children = node.children_bytes()
        off = atoi(second)
        gen = str(node.generation).encode("ascii") + b"\0"
        if off >= len(children):
            return W.XS_DIRECTORY_PART, gen + b"\0"
        maxlen = W.XENSTORE_PAYLOAD_MAX - len(gen) - 1
        length = 0
        while True:
            end = children.find(b"\0", off + length)
            name_len = end - (off + length)
            if length + name_len >= maxlen:
                break
            length += name_len + 1
            if off + length == len(children):
                break
        body = gen + children[off:off + length]
        if off + length == len(children):
            body += b"\0"
        return W.XS_DIRECTORY_PART, body

    def do_get_perms(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        node = self.daemon.store.get_node(self, self._path_arg(payload, True), tx)
        return W.XS_GET_PERMS, b"".join(str(p).encode("ascii") + b"\0" for p in node.perms)

    def do_set_perms(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        args = strings(payload)
        if len(args) < 2:
            raise XenstoreError(E.EINVAL)
        if not self.privileged and len(args) - 1 > self.daemon.quotas.node_permissions:
            raise XenstoreError(E.ENOSPC)
        perms = parse_perms(args[1:])
        name = self.canon(args[0], True)[0]
        self.daemon.store.set_perms(self, name, perms, tx)
        return W.XS_SET_PERMS, _OK

    def do_watch(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        args = strings(payload)
        if len(args) != 2:
            raise XenstoreError(E.EINVAL)
        watch = self.add_watch(args[0], args[1])
        # Reply first, then the initial event (C xenstored's order; libxenstore relies on it).
        self._after_reply.append(lambda: self.watch_fired(watch, watch.path))
        return W.XS_WATCH, _OK

    def add_watch(self, path: bytes, token: bytes) -> Watch:
        name, relative = self.canon(path, True)
        for w in self.watches:
            if w.path == name and w.token == token:
                raise XenstoreError(E.EEXIST)
        if not self.privileged and len(self.watches) >= self.daemon.quotas.watches:
            raise XenstoreError(E.E2BIG)
        watch = Watch(name, token, len(self.implicit_path) + 1 if relative else 0)
        self.watches.append(watch)
        return watch

    def do_unwatch(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        args = strings(payload)
        if len(args) != 2:
            raise XenstoreError(E.EINVAL)
        name = self.canon(args[0], True)[0]
        for i, w in enumerate(self.watches):
            if w.path == name and w.token == args[1]:
                del self.watches[i]
                return W.XS_UNWATCH, _OK
        raise XenstoreError(E.ENOENT)

    def do_reset_watches(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        self.watches.clear()
        self.transactions.clear()
        return W.XS_RESET_WATCHES, _OK

    def do_transaction_start(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        if tx is not None:
            raise XenstoreError(E.EBUSY)
        new = self.start_transaction()
        return W.XS_TRANSACTION_START, str(new.id).encode("ascii") + b"\0"

    def start_transaction(self) -> Transaction:
        if not self.privileged and len(self.transactions) >= self.daemon.quotas.transactions:
            raise XenstoreError(E.ENOSPC)
        while True:  # ids start at 1, skip 0 and ids in use on wrap-around
            new_id = self._next_tx_id
            self._next_tx_id = (self._next_tx_id + 1) & 0xFFFFFFFF
            if new_id != 0 and new_id not in self.transactions:
                break
        new = Transaction(new_id, self)
        self.transactions[new_id] = new
        return new

    def do_transaction_end(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        arg = onearg(payload)
        if arg not in (b"T", b"F"):
            raise XenstoreError(E.EINVAL)
        if tx is None:
            raise XenstoreError(E.ENOENT)
        del self.transactions[tx.id]
        if arg == b"T":
            self.daemon.store.commit(tx)
        return W.XS_TRANSACTION_END, _OK

    def do_get_domain_path(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        arg = onearg(payload)
        if arg is None:
            raise XenstoreError(E.EINVAL)
        return W.XS_GET_DOMAIN_PATH, domain_path(atoi(arg)).encode("ascii") + b"\0"

    def do_is_domain_introduced(self, tx_id: int, tx: Optional[Transaction],
                                payload: bytes) -> tuple[int, bytes]:
        arg = onearg(payload)
        if arg is None:
            raise XenstoreError(E.EINVAL)
        domid = atoi(arg)
        yes = domid == DOMID_SELF or domid == 0 or domid in self.daemon.domains
        return W.XS_IS_DOMAIN_INTRODUCED, b"T\0" if yes else b"F\0"

    def do_introduce(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        args = strings(payload)
        if len(args) < 3:
            raise XenstoreError(E.EINVAL)
        domid, mfn, port = atoi(args[0]), atoi(args[1]), atoi(args[2])
        if port == 0 or port >= 2 ** 31:
            raise XenstoreError(E.EINVAL)
        self.daemon.wire_introduce(domid, mfn, port)
        return W.XS_INTRODUCE, _OK

    def _domain_arg(self, payload: bytes) -> int:
        arg = onearg(payload)
        if arg is None:
            raise XenstoreError(E.EINVAL)
        domid = atoi(arg)
        if domid == 0:
            raise XenstoreError(E.EINVAL)
        if domid not in self.daemon.domains:
            raise XenstoreError(E.ENOENT)
        return domid

    def do_release(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        self.daemon.release_domain(self._domain_arg(payload))
        return W.XS_RELEASE, _OK

    def do_resume(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        self._domain_arg(payload)
        return W.XS_RESUME, _OK

    def do_set_target(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        args = strings(payload)
        if len(args) < 2:
            raise XenstoreError(E.EINVAL)
        domid, target = atoi(args[0]), atoi(args[1])
        conn = self.daemon.domains.get(domid)
        if conn is None or target not in self.daemon.domains:
            raise XenstoreError(E.ENOENT)
        conn.target = target
        return W.XS_SET_TARGET, _OK

    def do_control(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        args = strings(payload)
        if not args:
            raise XenstoreError(E.EINVAL)
        if args[0] == b"help":
            return W.XS_CONTROL, b"check\nlog\nprint\nhelp\n\0"
        if args[0] in (b"check", b"log", b"print"):
            if args[0] == b"print" and len(args) > 1:
                log.info("xenstore control print: %s", args[1].decode("ascii", "replace"))
            return W.XS_CONTROL, _OK
        raise XenstoreError(E.EINVAL)

    def do_unsupported(self, tx_id: int, tx: Optional[Transaction], payload: bytes) -> tuple[int, bytes]:
        raise XenstoreError(E.ENOSYS)


# type -> (handler, privileged only, ignores tx_id)
_HANDLERS: dict[int, tuple[Handler, bool, bool]] = {
    W.XS_CONTROL: (Connection.do_control, True, False),
    W.XS_DIRECTORY: (Connection.do_directory, False, False),
    W.XS_READ: (Connection.do_read, False, False),
    W.XS_GET_PERMS: (Connection.do_get_perms, False, False),
    W.XS_WATCH: (Connection.do_watch, False, True),
    W.XS_UNWATCH: (Connection.do_unwatch, False, True),
    W.XS_TRANSACTION_START: (Connection.do_transaction_start, False, False),
    W.XS_TRANSACTION_END: (Connection.do_transaction_end, False, False),
    W.XS_INTRODUCE: (Connection.do_introduce, True, False),
    W.XS_RELEASE: (Connection.do_release, True, False),
    W.XS_GET_DOMAIN_PATH: (Connection.do_get_domain_path, False, False),
    W.XS_WRITE: (Connection.do_write, False, False),
    W.XS_MKDIR: (Connection.do_mkdir, False, False),
    W.XS_RM: (Connection.do_rm, False, False),
    W.XS_SET_PERMS: (Connection.do_set_perms, False, False),
    W.XS_IS_DOMAIN_INTRODUCED: (Connection.do_is_domain_introduced, True, False),
    W.XS_RESUME: (Connection.do_resume, True, False),
    W.XS_SET_TARGET: (Connection.do_set_target, True, False),
    W.XS_RESET_WATCHES: (Connection.do_reset_watches, False, False),
    W.XS_DIRECTORY_PART: (Connection.do_directory_part, False, False),
    # Optional in xenstore.txt and not implemented: domUs get EACCES (privileged), dom0 ENOSYS.
    W.XS_GET_FEATURE: (Connection.do_unsupported, True, False),
    W.XS_SET_FEATURE: (Connection.do_unsupported, True, False),
    W.XS_GET_QUOTA: (Connection.do_unsupported, True, False),
    W.XS_SET_QUOTA: (Connection.do_unsupported, True, False),
}
