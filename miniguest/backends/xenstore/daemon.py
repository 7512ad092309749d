"""XenstoreDaemon: the store, its clients (domain rings, socket clients, the Python dom0 API) and domains.

Everything runs on the HostLoop thread. Work arrives through `RingConnection.on_event()` (the hypervisor,
when a guest notifies), the socket's loop callbacks, or a Dom0Store call; each ends with `flush_dirty()`, which
pushes the output every affected connection has queued (a write by one domain can fire watches of many) and
then runs deferred dom0 watch callbacks, so no callback ever runs inside a store operation.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import errno as E
from miniguest.hypervisor.intercept import MessageHook
from miniguest.hypervisor.save import Fields, StateError

from .connection import Connection
from .dom0 import Dom0Store
from .errors import XenstoreError
from .paths import SPECIAL_INTRODUCE, SPECIAL_RELEASE
from .perms import Perm
from .populate import populate_domain
from . import restorecheck
from .quotas import Quotas
from .ring import RingConnection
from .store import Node, Store
from .unixsock import SocketServer
from .watches import fire_watches

if TYPE_CHECKING:
    from miniguest.hypervisor.host import HostLoop

log = logging.getLogger(__name__)

__all__ = ["XenstoreDaemon", "populate_domain", "Dom0Store", "RingConnection", "Quotas", "XenstoreError"]

MapInterface = Callable[[int, int, int], tuple[memoryview, Callable[[], None]]]


class XenstoreDaemon:
    def __init__(self, quotas: Optional[Quotas] = None) -> None:
        self.quotas = quotas or Quotas()
        self.store = Store(self.quotas)
        self.store.fire = self._fire
        self.store.domain_exists = self.domain_exists
        #: the hypervisor's answer to "does domain N exist" (C xenstored asks Xen for a domain it has not
        #: been introduced to yet: the toolstack writes a new domain's tree before introducing it). None: no
        #: hypervisor to ask (a daemon on its own, in tests): every domain id is taken to exist.
        self.hypervisor_has_domain: Optional[Callable[[int], bool]] = None
        self.connections: list[Connection] = []
        self.domains: dict[int, RingConnection] = {}
        self._dirty: dict[Connection, None] = {}
        self._deferred: deque[Callable[[], None]] = deque()
        self._flushing = False
        self._servers: list[SocketServer] = []
        #: optional hook for a wire INTRODUCE of an unknown domain: (domid, mfn, port) -> (page, notify)
        self.map_interface: Optional[MapInterface] = None
        #: message hooks (tracing, fault injection): hypervisor/intercept.py's MessageHook, called from
        #: Connection.handle and _queue: hook(conn, "request" | "reply" | "event", type, req_id, tx_id,
        #: payload) -> errno name or None
        self.message_hooks: list[MessageHook] = []
        self.dom0 = Dom0Store(self)
        self.connections.append(self.dom0)

    def domain_exists(self, domid: int) -> bool:
        """dom0, an introduced domain, or one the hypervisor knows (C xenstored's domain_alloc_permrefs)."""
        if domid == 0 or domid in self.domains:
            return True
        return self.hypervisor_has_domain is None or self.hypervisor_has_domain(domid)

    # -- connections -------------------------------------------------------------------------------------
    def add_connection(self, conn: Connection) -> None:
        self.connections.append(conn)

    def remove_connection(self, conn: Connection) -> None:
        try:
            self.connections.remove(conn)
        except ValueError:
            pass
        self._dirty.pop(conn, None)

    def mark_dirty(self, conn: Connection) -> None:
        self._dirty[conn] = None

    def defer(self, fn: Callable[[], None]) -> None:
        self._deferred.append(fn)

    def flush_dirty(self) -> None:
        """Send queued output of every connection, then run deferred callbacks (re-entrancy safe)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._dirty or self._deferred:
                while self._dirty:
                    conn = next(iter(self._dirty))
                    del self._dirty[conn]
                    conn.flush()
                if self._deferred:
                    fn = self._deferred.popleft()
                    try:
                        fn()
                    except Exception:
                        log.exception("xenstore: dom0 watch callback failed")
        finally:
            self._flushing = False

    def _fire(self, name: str, exact: bool, node: Optional[Node], old_perms: Optional[tuple[Perm, ...]]) -> None:
        fire_watches(self.connections, self.store, name, exact, node, old_perms)

    def _fire_special(self, name: str) -> None:
        self._fire(name, True, self.store.nodes.get(name), None)

    # -- domains -----------------------------------------------------------------------------------------
    def introduce_domain(self, domid: int, page: memoryview, notify: Callable[[], None]) -> RingConnection:
        """Start serving `domid`'s ring page; `notify()` raises the guest's store event channel. Fires
        @introduceDomain. Introducing a domain again resets its connection (as a toolstack re-INTRODUCE)."""
        if not 0 <= domid < 0x7FF0:
            raise ValueError(f"bad domid {domid}")
        old = self.domains.get(domid)
        if old is not None:
            old.close()
            self.remove_connection(old)
        conn = RingConnection(self, domid, page, notify)
        self.domains[domid] = conn
        self.add_connection(conn)
        if domid != 0:
            self._fire_special(SPECIAL_INTRODUCE)
        self.flush_dirty()
        return conn

    def wire_introduce(self, domid: int, mfn: int, port: int) -> None:
        """XS_INTRODUCE from a dom0 client. A known domain gets its connection reset (C xenstored);
        an unknown one needs `map_interface` to reach its page."""
        conn = self.domains.get(domid)
        if conn is not None:
            conn.reset_ring()
            return
        if self.map_interface is None or domid == 0 or domid >= 0x7FF0:
            raise XenstoreError(E.EINVAL, "cannot map that domain's interface")
        page, notify = self.map_interface(domid, mfn, port)
        self.introduce_domain(domid, page, notify)

    def release_domain(self, domid: int) -> None:
        """Stop serving `domid`, delete the nodes it owns and its permission entries, fire @releaseDomain."""
        conn = self.domains.pop(domid, None)
        if conn is None:
            raise XenstoreError(E.ENOENT, f"domain {domid} not introduced")
        conn.watches.clear()  # no events for its own nodes' removal
        conn.close()
        self.remove_connection(conn)
        self.store.forget_domain(domid)
        self._fire_special(SPECIAL_RELEASE)
        self.flush_dirty()

    # -- saved state (hypervisor/save.py) -----------------------------------------------------------------
    def save_domain(self, domid: int) -> dict:
        """What a restored `domid` needs to find dom0's xenstored as it left it: the store (its generation
        counter included), the quotas and the domain's ring connection. Socket clients and dom0 watches set
        from Python (callbacks) are not carried."""
        conn = self.domains.get(domid)
        return dict(self.store.save(), quotas=self.quotas.save(),
                    connection=conn.save() if conn is not None else None)

    def restore_domain(self, domid: int, f: Fields) -> None:
        """Take back save_domain(domid) for the domain this toolstack rebuilt. The file is untrusted: its
        quotas must be this daemon's (dom0's configuration), and its tree and connection may only differ from
        what the toolstack built in ways the domain itself could have caused (restorecheck.py). Nothing is
        installed unless all of it passes."""
        saved_quotas = Quotas()
        saved_quotas.restore(f.sub("quotas"))
        if saved_quotas != self.quotas:
            raise StateError(f"{f.where}.quotas differ from this xenstored's (dom0 sets them, not a snapshot)")
        nodes, generation = Store.parse_saved(f)
        if domid != 0:
            problem = restorecheck.check_tree(domid, self.store.nodes, nodes, self.quotas)
            if problem:
                raise StateError(f"{f.where}: {problem}")
            nodes = restorecheck.merged(self.store.nodes, nodes)
        conn = self.domains.get(domid)
        conn_data = f.obj.get("connection")
        if (conn_data is None) != (conn is None):
            raise StateError("the xenstore connection of the domain does not match")
        if conn is not None:
            conn.restore(Fields(conn_data, f"{f.where}.connection"))
            if not conn.privileged:
                problem = restorecheck.check_connection(conn, nodes, self.quotas)
                if problem:
                    conn.drop_state()
                    raise StateError(f"{f.where}.connection: {problem}")
        self.store.install_saved(nodes, max(generation, self.store.generation))

    # -- host side ---------------------------------------------------------------------------------------
    def listen_unix(self, path: str, loop: "HostLoop") -> None:
        """Serve the wire protocol with dom0 privileges on a Unix socket (XENSTORED_PATH for Xen's tools)."""
        self._servers.append(SocketServer(self, path, loop))

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for conn in list(self.domains.values()):
            conn.close()
