"""Store semantics as a client sees them: values, paths, permissions, transactions and every quota."""
from __future__ import annotations

import pytest

from miniguest.abi import xs_wire as W
from miniguest.backends.xenstore.daemon import XenstoreDaemon
from miniguest.backends.xenstore.errors import XenstoreError
from miniguest.backends.xenstore.perms import Perm
from miniguest.backends.xenstore.quotas import Quotas

import struct

from xs_testlib import err, make_guest

HDR = struct.Struct("<IIII")


def raises(name: str, fn, *args):
    with pytest.raises(XenstoreError) as info:
        fn(*args)
    assert info.value.name == name, info.value.name


# -- basic values and paths ------------------------------------------------------------------------------
def test_initial_tree_matches_c_xenstored(daemon):
    s = daemon.dom0
    assert s.ls("/") == ["tool"]
    assert s.ls("/tool") == ["xenstored"]
    assert [str(p) for p in s.get_perms("/")] == ["n0"]
    assert [str(p) for p in s.get_perms("@releaseDomain")] == ["n0"]


def test_write_creates_parents_and_values_keep_nuls(daemon):
    s = daemon.dom0
    s.write("/a/b/c", b"x\0y\0")
    assert s.read("/a/b/c") == b"x\0y\0"
    assert s.read("/a/b") == b""
    assert s.ls("/a") == ["b"]
    s.write("/a/b/c", "")
    assert s.read("/a/b/c") == b""


def test_children_keep_creation_order(daemon):
    s = daemon.dom0
    for name in ("zeta", "alpha", "mid"):
        s.mkdir(f"/d/{name}")
    assert s.ls("/d") == ["zeta", "alpha", "mid"]


def test_mkdir_keeps_existing_value(daemon):
    s = daemon.dom0
    s.write("/k", "v")
    s.mkdir("/k")
    assert s.read("/k") == b"v"


def test_rm_semantics(daemon):
    s = daemon.dom0
    s.write("/a/b/c", "1")
    s.rm("/a/b/missing")             # missing node, parent exists: fine
    raises("ENOENT", s.rm, "/a/x/y")  # parent missing too
    raises("EINVAL", s.rm, "/")
    s.rm("/a/b")
    assert s.ls("/a") == []
    assert not s.exists("/a/b/c")


@pytest.mark.parametrize("bad", ["/a//b", "/a/", "/a.b", "/a b", "/caf\u00e9", "", "/a/b\n"])
def test_invalid_paths_are_einval(daemon, bad):
    raises("EINVAL", daemon.dom0.write, bad, "x")


def test_path_length_limits(daemon):
    s = daemon.dom0
    ok = "/" + "a" * 2047
    s.write(ok, "x")
    raises("EINVAL", s.write, "/" + "a" * 2048, "x")
    # the /local/domain/<id>/ prefix is not counted
    s.write("/local/domain/7/" + "b" * 2048, "x")
    raises("EINVAL", s.write, "/local/domain/7/" + "b" * 2049, "x")


def test_relative_paths_of_a_guest(daemon, guest):
    assert guest.call(W.XS_READ, "name") == b"guest5"
    assert guest.call(W.XS_GET_DOMAIN_PATH, "5") == b"/local/domain/5\0"


# -- permissions -----------------------------------------------------------------------------------------
def test_new_nodes_inherit_parent_perms_and_guest_owns_what_it_creates(daemon, guest):
    s = daemon.dom0
    s.write("/local/domain/5/data/dom0made", "x")
    assert [str(p) for p in s.get_perms("/local/domain/5/data/dom0made")] == ["n5"]
    guest.request(W.XS_WRITE, b"data/mine/leaf\0v")
    assert [str(p) for p in s.get_perms("/local/domain/5/data/mine/leaf")] == ["n5"]
    s.write("/shared/x", "1")
    s.set_perms("/shared", ["n0", "b5"])
    guest.request(W.XS_WRITE, b"/shared/g\0v")
    assert [str(p) for p in s.get_perms("/shared/g")] == ["n5", "b5"]


def test_permission_checks(daemon, guest):
    s = daemon.dom0
    s.write("/priv/secret", "s")
    assert err(guest, W.XS_READ, b"/priv/secret\0") == "EACCES"
    assert err(guest, W.XS_WRITE, b"/priv/secret\0x") == "EACCES"
    # a missing node below an unreadable parent must not reveal that it is missing
    assert err(guest, W.XS_READ, b"/priv/nothing\0") == "EACCES"
    s.set_perms("/priv/secret", ["n0", "r5"])
    assert guest.call(W.XS_READ, "/priv/secret") == b"s"
    assert err(guest, W.XS_WRITE, b"/priv/secret\0x") == "EACCES"
    s.set_perms("/priv/secret", ["r0"])      # default for others: read
    assert guest.call(W.XS_READ, "/priv/secret") == b"s"
    s.set_perms("/priv/secret", ["n5"])      # owned by the guest: full access
    assert err(guest, W.XS_WRITE, b"/priv/secret\0mine") == ""
    assert s.read("/priv/secret") == b"mine"


def test_guest_may_not_give_nodes_away(daemon, guest):
    guest.request(W.XS_WRITE, b"data/x\0v")
    assert err(guest, W.XS_SET_PERMS, b"data/x\0n5\0r7\0") == ""
    assert err(guest, W.XS_SET_PERMS, b"data/x\0n0\0") == "EPERM"
    assert err(guest, W.XS_SET_PERMS, b"name\0n5\0") == "EACCES"   # owner is dom0


def test_get_perms_wire_format_and_malformed_set_perms(daemon, guest):
    daemon.dom0.set_perms("/local/domain/5/data", ["n5", "r0", "b7"])
    assert guest.call(W.XS_GET_PERMS, "data") == b"n5\0r0\0b7\0"
    for bad in (b"data\0", b"data\0x5\0", b"data\0r\0", b"data\0r5x\0", b"data\0r99999999\0", b"data"):
        assert err(guest, W.XS_SET_PERMS, bad) == "EINVAL", bad
    raises("EINVAL", daemon.dom0.set_perms, "/local/domain/5/data", ["q1"])


# -- transactions ----------------------------------------------------------------------------------------
def test_transaction_commit_and_own_reads(daemon):
    s = daemon.dom0
    with s.transaction() as t:
        t.write("/t/a", "1")
        assert t.read("/t/a") == b"1"
        assert not s.exists("/t/a")      # invisible outside until commit
    assert s.read("/t/a") == b"1"


def test_transaction_abort_on_exception(daemon):
    s = daemon.dom0
    with pytest.raises(RuntimeError):
        with s.transaction() as t:
            t.write("/t/b", "1")
            raise RuntimeError("abort")
    assert not s.exists("/t/b")


def test_conflict_on_read_node_gives_eagain(daemon):
    s = daemon.dom0
    s.write("/c/x", "0")
    with pytest.raises(XenstoreError) as info:
        with s.transaction() as t:
            t.read("/c/x")
            t.write("/c/y", "1")
            s.write("/c/x", "changed")
    assert info.value.name == "EAGAIN"
    assert not s.exists("/c/y")


def test_conflict_on_directory_created_in_transaction(daemon):
    s = daemon.dom0
    with pytest.raises(XenstoreError) as info:
        with s.transaction() as t:
            t.mkdir("/newdir")
            s.write("/newdir/other", "x")   # created outside meanwhile
    assert info.value.name == "EAGAIN"
    assert s.ls("/newdir") == ["other"]


def test_unrelated_change_does_not_conflict(daemon):
    s = daemon.dom0
    s.write("/u/a", "1")
    s.write("/v/b", "1")
    with s.transaction() as t:
        t.read("/u/a")
        t.write("/u/c", "2")
        s.write("/v/b", "2")
    assert s.read("/u/c") == b"2"


def test_rm_inside_transaction_and_resurrection(daemon):
    s = daemon.dom0
    s.write("/r/a/b", "old")
    with s.transaction() as t:
        t.rm("/r/a")
        assert not t.exists("/r/a/b")
        assert s.read("/r/a/b") == b"old"
        t.write("/r/a/b", "new")          # resurrect inside the same transaction
        assert t.read("/r/a") == b""
    assert s.read("/r/a/b") == b"new"
    with s.transaction() as t:
        t.rm("/r/a")
    assert not s.exists("/r/a")
    assert s.ls("/r") == []


def test_transaction_wire_rules(daemon, guest):
    assert guest.call(W.XS_TRANSACTION_START, "") == b"1\0"
    assert guest.call(W.XS_TRANSACTION_START, "") == b"2\0"
    assert err(guest, W.XS_TRANSACTION_START, b"\0", tx_id=1) == "EBUSY"
    assert err(guest, W.XS_READ, b"name\0", tx_id=99) == "ENOENT"
    assert err(guest, W.XS_TRANSACTION_END, b"T\0", tx_id=0) == "ENOENT"
    assert err(guest, W.XS_TRANSACTION_END, b"X\0", tx_id=1) == "EINVAL"
    assert guest.request(W.XS_WRITE, b"data/tx\0in", 1)[0] == W.XS_WRITE
    assert err(guest, W.XS_READ, b"data/tx\0") == "ENOENT"
    assert guest.call(W.XS_READ, "data/tx", tx_id=1) == b"in"
    assert err(guest, W.XS_TRANSACTION_END, b"F\0", tx_id=1) == ""
    assert err(guest, W.XS_TRANSACTION_END, b"T\0", tx_id=1) == "ENOENT"   # gone after END
    assert err(guest, W.XS_READ, b"data/tx\0") == "ENOENT"
    guest.request(W.XS_WRITE, b"data/tx2\0in", 2)
    assert err(guest, W.XS_TRANSACTION_END, b"T\0", tx_id=2) == ""
    assert guest.call(W.XS_READ, "data/tx2") == b"in"


def test_conflicting_transactions_between_guests(daemon):
    a, b = make_guest(daemon, 5), make_guest(daemon, 6)
    daemon.dom0.write("/shared/counter", "0")
    daemon.dom0.set_perms("/shared/counter", ["b0"])
    ta = int(a.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    tb = int(b.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    a.call(W.XS_READ, "/shared/counter", tx_id=ta)
    b.call(W.XS_READ, "/shared/counter", tx_id=tb)
    a.request(W.XS_WRITE, b"/shared/counter\0" + b"1", ta)
    b.request(W.XS_WRITE, b"/shared/counter\0" + b"1", tb)
    assert err(a, W.XS_TRANSACTION_END, b"T\0", ta) == ""
    assert err(b, W.XS_TRANSACTION_END, b"T\0", tb) == "EAGAIN"


# -- quotas ----------------------------------------------------------------------------------------------
def small_daemon(**kw) -> XenstoreDaemon:
    return XenstoreDaemon(Quotas(**kw))


def test_quota_nodes():
    d = small_daemon()
    g = make_guest(d, 5)
    d.quotas.nodes = d.store.owned_count(5, None) + 5
    code = ""
    for i in range(40):
        code = err(g, W.XS_WRITE, f"data/n{i}\0".encode())
        if code:
            break
    assert code == "ENOSPC"
    assert code == "ENOSPC" and i == 5
    assert d.store.owned_count(5, None) == d.quotas.nodes
    d.dom0.write("/local/domain/5/data/dom0can", "x")   # dom0 is not limited


def test_quota_nodes_counts_transactions():
    d = small_daemon()
    g = make_guest(d, 5)
    d.quotas.nodes = d.store.owned_count(5, None) + 3
    tx = int(g.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    codes = [err(g, W.XS_WRITE, f"data/t{i}\0".encode(), tx) for i in range(4)]
    assert codes == ["", "", "", "ENOSPC"]
    assert err(g, W.XS_TRANSACTION_END, b"T\0", tx) == ""
    assert d.store.owned_count(5, None) == d.quotas.nodes


def test_quota_watches():
    d = small_daemon(watches=4)
    g = make_guest(d, 5)
    codes = [err(g, W.XS_WATCH, f"data/w{i}\0t\0".encode()) for i in range(5)]
    assert codes == ["", "", "", "", "E2BIG"]


def test_quota_transactions():
    d = small_daemon(transactions=3)
    g = make_guest(d, 5)
    codes = [err(g, W.XS_TRANSACTION_START, b"\0") for _ in range(4)]
    assert codes == ["", "", "", "ENOSPC"]


def test_quota_transaction_nodes():
    d = small_daemon(transaction_nodes=8)
    g = make_guest(d, 5)
    tx = int(g.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    codes = [err(g, W.XS_READ, f"data/q{i}\0".encode(), tx) for i in range(12)]
    assert "ENOSPC" in codes
    assert set(codes[:4]) == {"ENOENT"}


def test_quota_node_size_and_default_allows_2000_byte_values(daemon, guest):
    assert err(guest, W.XS_WRITE, b"data/big\0" + b"v" * 2000) == ""
    assert err(guest, W.XS_WRITE, b"data/big\0" + b"v" * 2048) == "ENOSPC"
    daemon.dom0.write("/local/domain/5/data/big", b"v" * 4000)   # dom0 unlimited


def test_quota_permissions(daemon, guest):
    guest.request(W.XS_WRITE, b"data/p\0v")
    assert err(guest, W.XS_SET_PERMS, b"data/p\0n5\0r1\0r2\0r3\0r4\0") == ""
    assert err(guest, W.XS_SET_PERMS, b"data/p\0n5\0r1\0r2\0r3\0r4\0r6\0") == "ENOSPC"


def test_quota_path_length_for_guest(daemon, guest):
    # (split in two components: one 2043-byte name would exceed the parent's node-size quota)
    ok = b"data/" + b"p" * 1000 + b"/" + b"q" * 1042
    assert err(guest, W.XS_WRITE, ok + b"\0") == ""
    assert err(guest, W.XS_WRITE, ok + b"q\0") == "EINVAL"


def test_quota_outstanding_stalls_reading():
    """A guest that never consumes replies gets at most `outstanding` of them queued; its further requests
    stay unread in its ring until it consumes (XSA-326/416: no unbounded buffering)."""
    d = small_daemon(outstanding=3)
    g = make_guest(d, 5)
    d.dom0.write("/local/domain/5/data/big", b"v" * 1000)
    g.messages()
    payload = b"data/big\0"
    for i in range(10):
        g.push(HDR.pack(W.XS_READ, 100 + i, 0, len(payload)) + payload)
    assert g.conn.outstanding == 3
    assert g.get(W.XS_REQ_PROD) != g.get(W.XS_REQ_CONS)     # the rest waits in the request ring
    got = []
    for _ in range(40):
        got += g.messages()
        g.server_event()
        if len(got) == 10:
            break
    assert [m[1] for m in got] == list(range(100, 110))
    assert all(m[3] == b"v" * 1000 for m in got)
