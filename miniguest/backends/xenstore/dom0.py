"""dom0's own view of the store from Python: what a toolstack in the same process uses instead of a socket.

It is a privileged connection like the Unix socket's, so watches set here obey the same rules and other
clients see its writes fire their watches. Callbacks run on the loop thread after the operation that caused
them has finished (never inside the store), so a callback may itself use the store.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

from miniguest.abi import errno as E

from .connection import Connection
from .errors import XenstoreError
from .perms import Perm, parse_perms
from .store import Transaction
from .watches import Watch

if TYPE_CHECKING:
    from .daemon import XenstoreDaemon

WatchCallback = Callable[[str, str], None]


def _bytes(value: bytes | bytearray | memoryview | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class _Ops:
    """The operations, bound to a transaction or not. Paths are absolute (relative ones are under
    /local/domain/0, as for any dom0 client)."""

    _conn: "Dom0Store"
    _tx: Optional[Transaction]

    def _path(self, path: str, special: bool = False) -> str:
        return self._conn.canon(_bytes(path), special)[0]

    def _done(self) -> None:
        self._conn.daemon.flush_dirty()

    def read(self, path: str) -> bytes:
        try:
            return self._conn.daemon.store.read(self._conn, self._path(path), self._tx)
        finally:
            self._done()

    def exists(self, path: str) -> bool:
        try:
            self.read(path)
            return True
        except XenstoreError as err:
            if err.errno == E.ENOENT:
                return False
            raise

    def write(self, path: str, value: bytes | str) -> None:
        try:
            self._conn.daemon.store.write(self._conn, self._path(path), _bytes(value), self._tx)
        finally:
            self._done()

    def mkdir(self, path: str) -> None:
        try:
            self._conn.daemon.store.mkdir(self._conn, self._path(path), self._tx)
        finally:
            self._done()

    def ls(self, path: str) -> list[str]:
        try:
            return list(self._conn.daemon.store.get_node(self._conn, self._path(path), self._tx).children)
        finally:
            self._done()

    def rm(self, path: str) -> None:
        try:
            self._conn.daemon.store.rm(self._conn, self._path(path), self._tx)
        finally:
            self._done()

    def get_perms(self, path: str) -> list[Perm]:
        try:
            return list(self._conn.daemon.store.get_node(self._conn, self._path(path, True), self._tx).perms)
        finally:
            self._done()

    def set_perms(self, path: str, perms: Iterable[str | Perm]) -> None:
        parsed = parse_perms(perms)
        try:
            self._conn.daemon.store.set_perms(self._conn, self._path(path, True), parsed, self._tx)
        finally:
            self._done()


class Dom0Transaction(_Ops):
    """Operations inside one transaction (see Dom0Store.transaction)."""

    def __init__(self, conn: "Dom0Store", tx: Transaction) -> None:
        self._conn = conn
        self._tx = tx

    @property
    def id(self) -> int:
        assert self._tx is not None
        return self._tx.id


class Dom0Store(_Ops, Connection):
    """Python API with dom0 privileges. Errors raise XenstoreError (err.name == "ENOENT" ...)."""

    def __init__(self, daemon: "XenstoreDaemon") -> None:
        Connection.__init__(self, daemon, 0, privileged=True)
        self._conn = self
        self._tx = None
        self._callbacks: dict[int, tuple[Watch, WatchCallback]] = {}
        self._tokens = itertools.count(1)

    def watch(self, path: str, callback: WatchCallback, token: Optional[str] = None) -> Watch:
        """Call `callback(path, token)` for changes at or below `path` (once at once, as every watch).
        Returns the handle for `unwatch`."""
        tok = _bytes(token) if token is not None else f"py-watch-{next(self._tokens)}".encode("ascii")
        try:
            watch = self.add_watch(_bytes(path), tok)
            self._callbacks[id(watch)] = (watch, callback)
            self.watch_fired(watch, watch.path)
        finally:
            self._done()
        return watch

    def unwatch(self, handle: Watch) -> None:
        for i, w in enumerate(self.watches):
            if w is handle:
                del self.watches[i]
                self._callbacks.pop(id(handle), None)
                return
        raise XenstoreError(E.ENOENT)

    def watch_fired(self, watch: Watch, name: str) -> None:
        entry = self._callbacks.get(id(watch))
        if entry is None or entry[0] is not watch:
            return
        callback, path, token = entry[1], watch.event_path(name), watch.token.decode("utf-8", "replace")

        def deliver() -> None:
            if any(w is watch for w in self.watches):  # not unwatched in the meantime
                callback(path, token)
        self.daemon.defer(deliver)

    @contextmanager
    def transaction(self) -> Iterator[Dom0Transaction]:
        """`with store.transaction() as t: t.write(...)` commits on a clean exit (XenstoreError EAGAIN if
        something it touched changed meanwhile: retry) and aborts if the block raises."""
        tx = self.start_transaction()
        handle = Dom0Transaction(self, tx)
        try:
            yield handle
        except BaseException:
            self.transactions.pop(tx.id, None)
            raise
        if self.transactions.pop(tx.id, None) is None:
            raise XenstoreError(E.ENOENT, "transaction was reset")
        try:
            self.daemon.store.commit(tx)
        finally:
            self._done()
