"""The dom0 half of a snapshot: the xenstore daemon's store and the domain's ring connection, the console
backend and the merged console log.

A restored guest must find dom0 exactly as it left it: a half-read request still buffered, replies and
watch events still queued for it, its watches, its open transactions (with their private view and the
generations they will be checked against at commit), and the same store generation counter, so that a
commit that would have failed with EAGAIN still does. Xenstore state is written field by field (below);
the console backend and log hold only plain data (bytes, counters, flags) and go through a small tagged
codec, so a field added to them later is carried along without changing this file.

Not carried: socket clients (a live host connection cannot be restored) and dom0 watches set from Python
(callbacks), as documented in docs/snapshot-format.md.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from miniguest.backends.xenstore.perms import Perm
from miniguest.backends.xenstore.store import Node, Transaction, _Access
from miniguest.backends.xenstore.watches import Watch
from miniguest.backends.xenstore.errors import XenstoreError

from .snapfile import Fields, SnapshotError, latin1, unlatin1

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain

# -- the tagged plain-data codec (console backend and log) --------------------------------------------------
_PLAIN = (int, str, bool, type(None))


def encode_plain(value: Any) -> Any:
    """bytes/bytearray/deque/dict/tuple/list/scalars -> JSON with {"$type": ...} tags; anything else raises."""
    if isinstance(value, bool) or isinstance(value, _PLAIN):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"$type": type(value).__name__, "v": latin1(value)}
    if isinstance(value, deque):
        return {"$type": "deque", "maxlen": value.maxlen, "v": [encode_plain(v) for v in value]}
    if isinstance(value, dict):
        return {"$type": "dict", "v": [[encode_plain(k), encode_plain(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"$type": "tuple", "v": [encode_plain(v) for v in value]}
    if isinstance(value, list):
        return [encode_plain(v) for v in value]
    raise TypeError(f"not plain data: {type(value).__name__}")


def decode_plain(value: Any, where: str) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list):
        return [decode_plain(v, where) for v in value]
    if isinstance(value, dict):
        tag, v = value.get("$type"), value.get("v")
        if tag in ("bytes", "bytearray") and isinstance(v, str):
            raw = unlatin1(v, where)
            return raw if tag == "bytes" else bytearray(raw)
        if tag == "deque" and isinstance(v, list) and (value.get("maxlen") is None
                                                      or isinstance(value.get("maxlen"), int)):
            return deque((decode_plain(x, where) for x in v), maxlen=value.get("maxlen"))
        if tag == "dict" and isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v):
            out = {}
            for k, x in v:
                key = decode_plain(k, where)
                if isinstance(key, (list, dict, bytearray, deque)):
                    raise SnapshotError(f"snapshot: {where}: unhashable dictionary key")
                out[key] = decode_plain(x, where)
            return out
        if tag == "tuple" and isinstance(v, list):
            return tuple(decode_plain(x, where) for x in v)
    raise SnapshotError(f"snapshot: {where}: unexpected value")


def _same_shape(fresh: Any, value: Any) -> bool:
    """A restored value must have the fresh object's type (containers: also their items' types)."""
    if fresh is None or value is None:       # an optional field (e.g. `broken`): None or a scalar
        return isinstance(fresh, _PLAIN) and isinstance(value, _PLAIN)
    if type(fresh) is not type(value):
        return False
    if isinstance(fresh, dict) and isinstance(value, dict):
        return set(fresh) == set(value) and all(_same_shape(fresh[k], value[k]) for k in fresh)
    return True


def capture_object(obj: Any, skip: frozenset[str]) -> dict[str, Any]:
    """Every attribute of `obj` except `skip` (which must name every non-plain one)."""
    out = {}
    for name, value in sorted(vars(obj).items()):
        if name in skip or callable(value):
            continue
        try:
            out[name] = encode_plain(value)
        except TypeError:
            raise SnapshotError(f"cannot snapshot {type(obj).__name__}.{name}: "
                                f"{type(value).__name__} is not plain data") from None
    return out


def restore_object(obj: Any, data: Any, skip: frozenset[str], where: str) -> None:
    if not isinstance(data, dict):
        raise SnapshotError(f"snapshot: {where} is not an object")
    for name, encoded in data.items():
        if name in skip or not hasattr(obj, name):
            raise SnapshotError(f"snapshot: {where}.{name} is not a field of {type(obj).__name__}")
        value = decode_plain(encoded, f"{where}.{name}")
        if not _same_shape(getattr(obj, name), value):
            raise SnapshotError(f"snapshot: {where}.{name} has the wrong type")
        setattr(obj, name, value)


CONSOLE_SKIP = frozenset({"page", "notify", "output", "report"})
CONSOLE_LOG_SKIP = frozenset({"sinks"})


# -- xenstore -----------------------------------------------------------------------------------------------
def _node(node: Node) -> dict[str, Any]:
    return {"value": latin1(node.value), "perms": [str(p) for p in node.perms], "children": list(node.children),
            "generation": node.generation}


def _perms(items: Any, where: str) -> tuple[Perm, ...]:
    if not isinstance(items, list) or not items:
        raise SnapshotError(f"snapshot: {where} must be a non-empty permission list")
    try:
        return tuple(Perm.parse(p) for p in items)
    except (XenstoreError, TypeError):
        raise SnapshotError(f"snapshot: {where} holds a malformed permission") from None


def _unnode(data: Any, where: str) -> Node:
    f = Fields(data, where)
    children = f.list("children")
    if not all(isinstance(c, str) for c in children):
        raise SnapshotError(f"snapshot: {where}.children must be strings")
    return Node(unlatin1(f.str("value"), f"{where}.value"), _perms(f.list("perms"), f"{where}.perms"),
                list(children), f.int("generation"))


def capture_xenstore(domain: "Domain") -> dict[str, Any]:
    daemon = domain.xenstored
    store = daemon.store
    conn = daemon.domains.get(domain.domid)
    out: dict[str, Any] = {
        "generation": store.generation,
        "nodes": [[name, _node(node)] for name, node in store.nodes.items()],
        "quotas": dict(vars(daemon.quotas)),
        "connection": None,
    }
    if conn is not None:
        out["connection"] = {
            "watches": [[w.path, latin1(_tok(w.token)), w.prefix_len] for w in conn.watches],
            "transactions": [[tx.id, [[name, _access(acc)] for name, acc in tx.accessed.items()]]
                             for tx in conn.transactions.values()],
            "next_tx_id": conn._next_tx_id,
            "out": [[latin1(o.data), o.is_event] for o in conn.out],
            "out_pos": conn.out_pos,
            "input": latin1(conn._in),
            "error": conn.error,
            "kick": conn._kick,
            "closed": conn.closed,
            "target": conn.target,
        }
    return out


def _tok(token: Any) -> bytes:
    return token.encode("latin-1") if isinstance(token, str) else bytes(token)


def _access(acc: _Access) -> dict[str, Any]:
    return {"generation": acc.generation, "node": _node(acc.node) if acc.node is not None else None,
            "old_perms": [str(p) for p in acc.old_perms] if acc.old_perms is not None else None,
            "modified": acc.modified, "fire_exact": acc.fire_exact}


def restore_xenstore(domain: "Domain", data: Any) -> None:
    f = Fields(data, "backends.xenstore")
    daemon = domain.xenstored
    store = daemon.store
    quotas = f.sub("quotas")
    for name in vars(daemon.quotas):
        setattr(daemon.quotas, name, quotas.int(name, 0, 1 << 40))
    nodes: dict[str, Node] = {}
    for i, item in enumerate(f.list("nodes", 1 << 22)):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise SnapshotError(f"snapshot: backends.xenstore.nodes[{i}] must be [path, node]")
        nodes[item[0]] = _unnode(item[1], f"backends.xenstore.nodes[{i}]")
    if "/" not in nodes:
        raise SnapshotError("snapshot: backends.xenstore has no root node")
    store.nodes = nodes
    store.generation = f.int("generation")
    store.node_counts = {}
    for node in nodes.values():
        store.node_counts[node.owner] = store.node_counts.get(node.owner, 0) + 1
    conn_data = f.obj.get("connection")
    conn = daemon.domains.get(domain.domid)
    if conn_data is None or conn is None:
        if (conn_data is None) != (conn is None):
            raise SnapshotError("snapshot: the xenstore connection of the domain does not match")
        return
    _restore_connection(conn, Fields(conn_data, "backends.xenstore.connection"))


def _restore_connection(conn: Any, f: Fields) -> None:
    from miniguest.backends.xenstore.connection import _Out
    conn.watches = []
    for i, w in enumerate(f.list("watches", 1 << 16)):
        if not (isinstance(w, list) and len(w) == 3 and isinstance(w[0], str) and isinstance(w[1], str)
                and isinstance(w[2], int)):
            raise SnapshotError(f"snapshot: {f.where}.watches[{i}] must be [path, token, prefix_len]")
        conn.watches.append(Watch(w[0], unlatin1(w[1], f"{f.where}.watches[{i}]"), w[2]))
    conn.transactions = {}
    for i, t in enumerate(f.list("transactions", 1 << 16)):
        if not (isinstance(t, list) and len(t) == 2 and isinstance(t[0], int) and isinstance(t[1], list)):
            raise SnapshotError(f"snapshot: {f.where}.transactions[{i}] must be [id, accessed]")
        tx = Transaction(t[0], conn)
        for j, item in enumerate(t[1]):
            where = f"{f.where}.transactions[{i}][{j}]"
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise SnapshotError(f"snapshot: {where} must be [path, access]")
            a = Fields(item[1], where)
            node = a.obj.get("node")
            old = a.obj.get("old_perms")
            fire = a.obj.get("fire_exact")
            if fire is not None and not isinstance(fire, bool):
                raise SnapshotError(f"snapshot: {where}.fire_exact must be true, false or null")
            tx.accessed[item[0]] = _Access(a.int("generation", optional=True),
                                           _unnode(node, where + ".node") if node is not None else None,
                                           _perms(old, where + ".old_perms") if old is not None else None,
                                           a.bool("modified"), fire)
        conn.transactions[tx.id] = tx
    conn._next_tx_id = f.int("next_tx_id", 0, 0xFFFFFFFF)
    conn.out = deque()
    conn._queued_events = {}
    conn.out_bytes = conn.outstanding = 0
    for i, o in enumerate(f.list("out", 1 << 16)):
        if not (isinstance(o, list) and len(o) == 2 and isinstance(o[0], str) and isinstance(o[1], bool)):
            raise SnapshotError(f"snapshot: {f.where}.out[{i}] must be [data, is_event]")
        data = unlatin1(o[0], f"{f.where}.out[{i}]")
        conn.out.append(_Out(data, o[1]))
        conn.out_bytes += len(data)
        if o[1]:
            conn._queued_events[data] = conn._queued_events.get(data, 0) + 1
        else:
            conn.outstanding += 1
    conn.out_pos = f.int("out_pos", 0, len(conn.out[0].data) if conn.out else 0)
    conn._in = bytearray(unlatin1(f.str("input"), f"{f.where}.input"))
    conn.error = f.int("error", 0, 255)
    conn._kick = f.bool("kick")
    conn.closed = f.bool("closed")
    conn.target = f.int("target", 0, 0xFFFF, optional=True)


# -- console ------------------------------------------------------------------------------------------------
def capture_console(domain: "Domain") -> dict[str, Any]:
    return {"backend": capture_object(domain.console_backend, CONSOLE_SKIP),
            "log": capture_object(domain.console, CONSOLE_LOG_SKIP)}


def restore_console(domain: "Domain", data: Any) -> None:
    f = Fields(data, "backends.console")
    restore_object(domain.console_backend, f.obj.get("backend"), CONSOLE_SKIP, "backends.console.backend")
    restore_object(domain.console, f.obj.get("log"), CONSOLE_LOG_SKIP, "backends.console.log")
