"""One test per class of abuse behind the xenstored security advisories that applies to a daemon like ours.

Each test plays the malicious guest and checks what the advisory's fix guarantees: an errno or a stopped
connection for the attacker, an intact and consistent store, and service for everybody else.
"""
from __future__ import annotations

import struct
from collections import Counter

from xs_testlib import err, make_guest

from miniguest.abi import xs_wire as W
from miniguest.backends.xenstore.daemon import XenstoreDaemon
from miniguest.backends.xenstore.paths import child_path, parent_of
from miniguest.backends.xenstore.quotas import Quotas

HDR = struct.Struct("<IIII")


def consistent(d: XenstoreDaemon) -> None:
    """No orphans, no dangling child entries, exact per-domain node accounting."""
    nodes = d.store.nodes
    for name, node in nodes.items():
        if name != "/" and not name.startswith("@"):
            parent = nodes.get(parent_of(name))
            assert parent is not None, f"orphan {name}"
            assert name.rsplit("/", 1)[1] in parent.children, f"{name} not listed in its parent"
        for child in node.children:
            assert child_path(name, child) in nodes, f"dangling child {child} of {name}"
    counts = Counter(node.owner for node in nodes.values())
    assert {k: v for k, v in d.store.node_counts.items() if v} == dict(counts)


def test_oversized_message(daemon):
    """Payload length > XENSTORE_PAYLOAD_MAX: the connection is stopped with ERROR_PROTO, nothing else."""
    bad, good = make_guest(daemon, 5), make_guest(daemon, 6)
    bad.push(HDR.pack(W.XS_WRITE, 1, 0, 0xFFFFFFFF))
    assert bad.get(W.XS_ERROR_FIELD) == W.XENSTORE_ERROR_PROTO
    assert good.call(W.XS_READ, "name") == b"guest6"
    consistent(daemon)


def test_out_of_range_ring_index(daemon):
    """Indexes more than a ring apart (e.g. prod behind cons): ERROR_RINGIDX, no read of stray memory."""
    bad, good = make_guest(daemon, 5), make_guest(daemon, 6)
    bad.put(W.XS_REQ_CONS, 100)
    bad.put(W.XS_REQ_PROD, 50)
    bad.server_event()
    assert bad.get(W.XS_ERROR_FIELD) == W.XENSTORE_ERROR_RINGIDX
    assert good.call(W.XS_READ, "name") == b"guest6"


def test_thousands_of_watches_and_watch_event_floods():
    """XSA-326: watches are capped per domain (E2BIG) and queued events are bounded by the memory quota,
    duplicates collapsing, however much the guest refuses to read."""
    d = XenstoreDaemon(Quotas(memory=64 * 1024))
    g = make_guest(d, 5)
    codes = [err(g, W.XS_WATCH, f"data\0t{i}\0".encode()) for i in range(2000)]
    assert codes.count("") == 128 and set(codes[128:]) == {"E2BIG"}
    g.messages()
    for i in range(300):          # each write fires 128 events at a guest that reads nothing
        d.dom0.write(f"/local/domain/5/data/n{i}", "x")
    assert g.conn.out_bytes <= 64 * 1024
    g.messages()
    g.server_event()
    assert g.call(W.XS_READ, "name") == b"guest5"


def test_deep_node_hierarchy_does_not_exhaust_the_stack(daemon, guest):
    """XSA-418: removing (and watching) a very deep tree must not recurse per level."""
    depth = 900                     # 900 levels: deeper than Python's default recursion limit
    path = b"data/" + b"/".join([b"a"] * depth)
    guest.request(W.XS_WATCH, b"data\0deep\0")
    assert guest.request(W.XS_WRITE, path + b"\0leaf") == (W.XS_WRITE, b"OK\0")
    assert guest.request(W.XS_RM, b"data/a\0") == (W.XS_RM, b"OK\0")
    assert not daemon.store.exists("/local/domain/5/data/a")
    consistent(daemon)


def test_long_paths(daemon, guest):
    """Path limits hold for every caller; the /local/domain/<id>/ prefix is not counted."""
    assert err(guest, W.XS_WRITE, b"/" + b"x" * 3072 + b"\0") == "EINVAL"
    assert err(guest, W.XS_WRITE, b"data/" + b"y" * 4000 + b"\0") == "EINVAL"
    import pytest
    from miniguest.backends.xenstore.errors import XenstoreError
    with pytest.raises(XenstoreError):
        daemon.dom0.write("/local/domain/1/" + "z/" * 1530 + "z", "x")   # > 3072 absolute


def test_bare_domain_path_prefix(daemon, guest):
    """CVE-2026-23555: "/local/domain/" (prefix alone, trailing slash) and the empty relative path."""
    for p in (b"/local/domain/\0", b"\0", b"/local/domain/5/\0", b"/local/domain//5\0"):
        assert err(guest, W.XS_READ, p) == "EINVAL", p
        assert err(guest, W.XS_WRITE, p + b"v") == "EINVAL", p
    assert guest.call(W.XS_READ, "name") == b"guest5"


def test_transaction_flood():
    """XSA-326: open transactions and nodes touched per transaction are capped (ENOSPC)."""
    d = XenstoreDaemon(Quotas(transaction_nodes=50))
    g = make_guest(d, 5)
    codes = [err(g, W.XS_TRANSACTION_START, b"\0") for _ in range(30)]
    assert codes.count("") == 10 and set(codes[10:]) == {"ENOSPC"}
    reads = [err(g, W.XS_READ, f"data/m{i}\0".encode(), tx_id=1) for i in range(60)]
    assert "ENOSPC" in reads
    assert len(g.conn.transactions[1].accessed) <= 50


def test_reset_watches_inside_a_transaction(daemon, guest):
    """RESET_WATCHES sent with the id of an open transaction drops that transaction too, cleanly."""
    guest.request(W.XS_WATCH, b"data\0w\0")
    tx = int(guest.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    guest.request(W.XS_WRITE, b"data/tx\0v", tx)
    assert guest.request(W.XS_RESET_WATCHES, b"", tx) == (W.XS_RESET_WATCHES, b"OK\0")
    assert err(guest, W.XS_TRANSACTION_END, b"T\0", tx) == "ENOENT"
    assert err(guest, W.XS_READ, b"data/tx\0") == "ENOENT"
    assert guest.conn.watches == []
    consistent(daemon)


def test_payloads_without_nuls(daemon, guest):
    """Strings without their terminating NUL are EINVAL, never read past the payload."""
    for t, p in ((W.XS_READ, b"name"), (W.XS_WRITE, b"data/x"), (W.XS_MKDIR, b"data/y"), (W.XS_RM, b"name"),
                 (W.XS_DIRECTORY, b"data"), (W.XS_DIRECTORY_PART, b"data\x000"), (W.XS_GET_PERMS, b"data"),
                 (W.XS_SET_PERMS, b"data\0n5"), (W.XS_WATCH, b"data\0tok"), (W.XS_UNWATCH, b"data\0tok"),
                 (W.XS_TRANSACTION_END, b"T"), (W.XS_GET_DOMAIN_PATH, b"5")):
        assert err(guest, t, p) == "EINVAL", (t, p)
    assert daemon.dom0.read("/local/domain/5/name") == b"guest5"


def test_guest_cannot_touch_the_root(daemon, guest):
    """XSA-353: the root node is permission-checked like any other."""
    assert err(guest, W.XS_SET_PERMS, b"/\0n5\0") == "EACCES"
    assert err(guest, W.XS_RM, b"/\0") == "EACCES"
    assert err(guest, W.XS_WRITE, b"/evil\0x") == "EACCES"
    assert err(guest, W.XS_DIRECTORY, b"/\0") == "EACCES"
    assert err(guest, W.XS_GET_PERMS, b"/\0") == "EACCES"
    assert daemon.dom0.ls("/") == ["tool", "local", "vm", "libxl"]


def test_guest_cannot_give_nodes_away(daemon, guest):
    """XSA-352 (ownership as a quota weapon): only dom0 may change a node's owner."""
    guest.request(W.XS_WRITE, b"data/mine\0v")
    assert err(guest, W.XS_SET_PERMS, b"data/mine\0n6\0") == "EPERM"
    assert err(guest, W.XS_SET_PERMS, b"data/mine\0n0\0") == "EPERM"


def test_stale_permissions_of_a_dead_domain(daemon):
    """XSA-322/419: when a domain goes, its nodes go and its permission entries are revoked, so a new
    domain reusing the id inherits nothing."""
    d = daemon.dom0
    make_guest(daemon, 7)
    g7 = make_guest(daemon, 7, populate=False)
    g7.request(W.XS_WRITE, b"/local/domain/7/data/left-behind\0x")
    d.write("/secret/for7", "s")
    d.set_perms("/secret/for7", ["n0", "r7"])
    daemon.release_domain(7)
    assert not d.exists("/local/domain/7/data")           # nodes it owned are gone
    assert [str(p) for p in d.get_perms("/secret/for7")] == ["n0"]
    newcomer = make_guest(daemon, 7, populate=False)
    assert err(newcomer, W.XS_READ, b"/secret/for7\0") == "EACCES"
    consistent(daemon)


def test_create_and_delete_in_one_transaction_keeps_accounting(daemon):
    """XSA-421/440: nodes created then deleted inside a transaction, or removed outside meanwhile, leave
    exact node accounting (no free nodes, no negative counts)."""
    g = make_guest(daemon, 5)
    before = daemon.store.owned_count(5, None)
    for _ in range(50):
        tx = int(g.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
        for i in range(5):
            g.request(W.XS_WRITE, f"data/t{i}\0v".encode(), tx)
        g.request(W.XS_RM, b"data/t0\0", tx)
        assert err(g, W.XS_TRANSACTION_END, b"T\0", tx) == ""
        g.request(W.XS_RM, b"data/t1\0")
        for i in range(1, 5):
            g.request(W.XS_RM, f"data/t{i}\0".encode())
    assert daemon.store.owned_count(5, None) == before
    tx = int(g.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    g.request(W.XS_WRITE, b"data/z/child\0v", tx)
    daemon.dom0.write("/local/domain/5/data/z", "outside")
    daemon.dom0.rm("/local/domain/5/data/z")
    assert err(g, W.XS_TRANSACTION_END, b"T\0", tx) == "EAGAIN"
    assert daemon.store.owned_count(5, None) == before
    consistent(daemon)


def test_no_orphans_when_parent_is_removed_during_a_transaction(daemon, guest):
    """XSA-415: a node created in a transaction whose parent is deleted outside must not survive."""
    guest.request(W.XS_WRITE, b"data/p\0")
    tx = int(guest.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    guest.request(W.XS_WRITE, b"data/p/orphan\0v", tx)
    daemon.dom0.rm("/local/domain/5/data/p")
    assert err(guest, W.XS_TRANSACTION_END, b"T\0", tx) == "EAGAIN"
    assert not daemon.store.exists("/local/domain/5/data/p/orphan")
    consistent(daemon)


def test_requests_without_reading_responses(daemon, guest):
    """XSA-326/416: a guest that never reads replies cannot make the daemon buffer without bound."""
    daemon.dom0.write("/local/domain/5/data/big", b"B" * 1900)
    req = b"data/big\0"
    for i in range(500):
        guest.push(HDR.pack(W.XS_READ, i, 0, len(req)) + req)
    assert guest.conn.outstanding <= daemon.quotas.outstanding
    assert guest.conn.out_bytes <= (daemon.quotas.outstanding + 1) * (16 + 1900)


def test_release_and_reintroduce_soft_reset(daemon):
    """XSA-425: RELEASE (as after a guest's soft reset) then INTRODUCE again must just work."""
    dom0 = make_guest(daemon, 0, populate=False)
    g = make_guest(daemon, 5)
    g.request(W.XS_WATCH, b"data\0w\0")
    for _ in range(3):
        assert dom0.call(W.XS_RELEASE, "5") == b"OK\0"
        assert err(dom0, W.XS_RELEASE, b"5\0") == "ENOENT"
        g = make_guest(daemon, 5)
        assert g.call(W.XS_READ, "name") == b"guest5"
    consistent(daemon)
