"""Watches and the rule deciding who hears about a change.

A watch is (canonical path, token) on a connection; a relative watch remembers how much prefix to strip so its
events come back relative. A change at `path` fires every watch on `path` or an ancestor (or, for removed
descendants and the special @-events, only watches exactly on it). A watcher is told only if it may read the
node (before or after the change) or its parent, as C xenstored does since XSA-115: otherwise a guest watching
"/" would see every change in the store.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

from miniguest.hypervisor.save import StateError, latin1, unlatin1

from .paths import is_child, parent_of
from .perms import PERM_READ, Perm, perm_for

if TYPE_CHECKING:
    from .connection import Connection
    from .store import Node, Store


@dataclass
class Watch:
    path: str          # canonical
    token: str
    prefix_len: int    # 0, or len("/local/domain/<id>/") for a watch registered with a relative path

    def event_path(self, name: str) -> str:
        return name[self.prefix_len:]

    def save(self) -> list:
        token = self.token.encode("latin-1") if isinstance(self.token, str) else bytes(self.token)
        return [self.path, latin1(token), self.prefix_len]

    @classmethod
    def from_saved(cls, data: object, where: str) -> "Watch":
        if not (isinstance(data, list) and len(data) == 3 and isinstance(data[0], str) and isinstance(data[1], str)
                and isinstance(data[2], int)):
            raise StateError(f"{where} must be [path, token, prefix_len]")
        return cls(data[0], unlatin1(data[1], where), data[2])  # type: ignore[arg-type]


def _may_see(conn: "Connection", store: "Store", name: str, node: Optional["Node"],
             old_perms: Optional[tuple[Perm, ...]]) -> bool:
    if conn.privileged:
        return True
    if old_perms is not None and perm_for(conn, old_perms) & PERM_READ:
        return True
    if node is None:
        node = store.nodes.get(name)
    if node is not None and perm_for(conn, node.perms) & PERM_READ:
        return True
    parent = store.nodes.get(parent_of(name))
    return parent is not None and bool(perm_for(conn, parent.perms) & PERM_READ)


def fire_watches(conns: Iterable["Connection"], store: "Store", name: str, exact: bool,
                 node: Optional["Node"], old_perms: Optional[tuple[Perm, ...]]) -> None:
    """Queue a WATCH_EVENT on every connection with a matching watch that may see `name`."""
    for conn in conns:
        if not conn.watches or not _may_see(conn, store, name, node, old_perms):
            continue
        for watch in conn.watches:
            if (name == watch.path) if exact else is_child(name, watch.path):
                conn.watch_fired(watch, name)
