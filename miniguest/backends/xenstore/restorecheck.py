"""What a restored domain may bring into dom0's xenstored: only what the domain itself could have done.

A snapshot carries the whole store and the domain's connection, but the store is dom0's: its nodes tell dom0's
tools and backends what to do (a backend directory names the file behind a disk), and who owns a node decides
who may change it. So a saved tree is compared with the tree this toolstack built for the restored domain
(`fresh`), node by node, with xenstored's own rules for an unprivileged caller:

- a node the toolstack gave the domain stays the domain's (set_perms cannot change an owner);
- any other existing node keeps its permissions, and its value unless the domain may write it;
- a new node is the domain's (xenstored makes the creator the owner) under a parent it may write;
- a node is gone only if the domain may write it or a removed ancestor (rm removes the subtree);
- the special @-nodes are dom0's.
Inside the domain's home (/local/domain/<id>), which dom0's backends read only as the frontend's word, dom0
may also have changed values and added nodes of its own during the run (the toolstack's memory/target, say);
outside it, a node dom0 added or changed after the build is refused: a snapshot cannot write dom0's part of
the store.
The connection may hold what the domain could have made it hold within its quotas (watches, transactions,
queued output) and no SET_TARGET (a privilege only dom0 grants); open transactions may only carry changes
the same rules allow. Each function returns a one-line problem or None.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .paths import child_path, parent_of
from .perms import PERM_WRITE, perm_for

if TYPE_CHECKING:
    from .connection import Connection
    from .quotas import Quotas
    from .store import Node


class _Guest:
    """The restored domain as xenstored sees an unprivileged caller."""
    privileged = False
    target = None

    def __init__(self, domid: int) -> None:
        self.domid = domid


def _writable(guest: _Guest, node: "Node") -> bool:
    return bool(perm_for(guest, node.perms) & PERM_WRITE)


def check_tree(domid: int, fresh: dict[str, "Node"], saved: dict[str, "Node"], quotas: "Quotas") -> Optional[str]:
    """Problems with a saved tree for `domid`, against the tree built for it (see the module's rules)."""
    guest = _Guest(domid)
    if "/" not in saved:
        return "the saved store has no root node"
    owned = 0
    for name, node in saved.items():
        if name.startswith("@"):
            if name not in fresh or fresh[name].perms != node.perms:
                return f"special node {name} is not dom0's as this xenstored has it"
            continue
        if name != "/":
            parent = saved.get(parent_of(name))
            if parent is None or name.rsplit("/", 1)[1] not in parent.children:
                return f"node {name} is not a listed child of its parent"
        for child in node.children:
            if child_path(name, child) not in saved:
                return f"node {name} lists a child {child} that does not exist"
        if node.owner == domid:
            owned += 1
            if node.size() > quotas.node_size or len(node.perms) > quotas.node_permissions + 1:
                return f"node {name} is larger than the domain's quota allows"
    if owned > quotas.nodes + sum(1 for n in fresh.values() if n.owner == domid):
        return f"the domain owns {owned} nodes, more than its quota"
    for name in set(fresh) | set(saved):
        if name.startswith("@"):
            continue
        problem = _check_node(guest, name, fresh, saved)
        if problem:
            return problem
    return None


def _check_node(guest: _Guest, name: str, fresh: dict[str, "Node"], saved: dict[str, "Node"]) -> Optional[str]:
    domid = guest.domid
    home = f"/local/domain/{domid}"
    in_home = name == home or name.startswith(home + "/")
    f, s = fresh.get(name), saved.get(name)
    if f is not None and s is not None:
        if f.owner == domid:
            return None if s.owner == domid else f"node {name} was given away (only dom0 changes an owner)"
        if s.perms != f.perms:
            return f"node {name} has other permissions than dom0 gave it"
        if s.value != f.value and not _writable(guest, f) and not in_home:
            return f"node {name} has a value the domain may not write"
        return None
    if s is not None:                                  # created
        if s.owner == 0 and in_home and name != home:
            return None                                # dom0 wrote into the domain's home
        if s.owner != domid:
            return f"node {name} is owned by d{s.owner} but was not made by this toolstack"
        parent = saved.get(parent_of(name))
        if parent is None or not _writable(guest, parent):
            return f"node {name} was created under a parent the domain may not write"
        return None
    assert f is not None                               # removed: by the domain, itself or with an ancestor
    cur = name
    while True:
        node = fresh.get(cur)
        if node is not None and cur not in saved and _writable(guest, node):
            return None
        if cur == "/" or cur in saved:
            return f"node {name} was removed, but the domain may not remove it"
        cur = parent_of(cur)


def check_connection(conn: "Connection", nodes: dict[str, "Node"], quotas: "Quotas") -> Optional[str]:
    """Problems with a restored connection of an unprivileged domain, against the tree it will see."""
    if conn.target is not None:
        return "the connection carries a SET_TARGET (only dom0 grants that)"
    if len(conn.watches) > quotas.watches:
        return f"{len(conn.watches)} watches, more than the domain's quota"
    if len(conn.transactions) > quotas.transactions:
        return f"{len(conn.transactions)} open transactions, more than the domain's quota"
    if conn.out_bytes > quotas.memory + 4096 + 16 or conn.outstanding > quotas.outstanding:
        return "more queued output than the domain's quota allows"
    guest = _Guest(conn.domid)
    for tx in conn.transactions.values():
        if len(tx.accessed) > quotas.transaction_nodes:
            return f"transaction {tx.id} touches more nodes than the quota allows"
        for name, acc in tx.accessed.items():
            if not acc.modified:
                continue
            problem = _check_tx_change(guest, name, acc.node, nodes, tx.accessed)
            if problem:
                return f"transaction {tx.id}: {problem}"
    return None


def _check_tx_change(guest: _Guest, name: str, new: Optional["Node"], nodes: dict[str, "Node"],
                     accessed: dict) -> Optional[str]:
    cur = nodes.get(name)
    if new is None:
        return None if cur is None or _writable(guest, cur) else f"removes {name}, which the domain may not write"
    if cur is not None:
        if not _writable(guest, cur):
            return f"writes {name}, which the domain may not write"
        if cur.owner != guest.domid and new.perms != cur.perms:
            return f"changes the permissions of {name}, which the domain does not own"
        if cur.owner == guest.domid and new.owner != guest.domid:
            return f"gives {name} away"
        return None
    if new.owner != guest.domid:
        return f"creates {name} owned by d{new.owner}"
    parent_name = parent_of(name)
    parent_acc = accessed.get(parent_name)
    parent = parent_acc.node if parent_acc is not None and parent_acc.node is not None else nodes.get(parent_name)
    if parent is None or not _writable(guest, parent):
        return f"creates {name} under a parent the domain may not write"
    return None


def merged(fresh: dict[str, "Node"], saved: dict[str, "Node"]) -> dict[str, "Node"]:
    """The tree to install: the saved nodes, but the fresh node object where nothing differs (so a node the
    run did not touch keeps this xenstored's generation)."""
    out = {}
    for name, node in saved.items():
        f = fresh.get(name)
        if f is not None and (f.value, f.perms, f.children) == (node.value, node.perms, node.children):
            out[name] = f
        else:
            out[name] = node
    return out
