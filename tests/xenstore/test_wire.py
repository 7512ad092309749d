"""The wire protocol through a real ring page: reply formats, errors, privileged types and watches."""
from __future__ import annotations

import struct

import pytest
from xs_testlib import err, make_guest

from miniguest.abi import xs_wire as W

HDR = struct.Struct("<IIII")


def reply(g, msg_type, payload, tx_id=0, req_id=None):
    """(type, req_id, tx_id, payload) of the reply to one raw request."""
    rid = g.send(msg_type, payload, tx_id, req_id)
    for _ in range(50):
        for m in g.messages():
            if m[0] != W.XS_WATCH_EVENT and m[1] == rid:
                return m
        g.server_event()
    raise AssertionError("no reply")


def drain_events(g):
    g.server_event()
    return [tuple(m[3].split(b"\0")[:2]) for m in g.messages() if m[0] == W.XS_WATCH_EVENT]


# -- reply formats ---------------------------------------------------------------------------------------
def test_replies_echo_req_id_and_tx_id(guest):
    tx = int(guest.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    assert reply(guest, W.XS_READ, b"name\0", tx, req_id=0xDEADBEEF) == (W.XS_READ, 0xDEADBEEF, tx, b"guest5")
    assert reply(guest, W.XS_READ, b"nope\0", tx, req_id=77) == (W.XS_ERROR, 77, tx, b"ENOENT\0")
    assert reply(guest, W.XS_READ, b"nope\0", 1234, req_id=78) == (W.XS_ERROR, 78, 1234, b"ENOENT\0")


def test_ok_replies(guest):
    for msg_type, payload in ((W.XS_WRITE, b"data/a\0v"), (W.XS_MKDIR, b"data/b\0"), (W.XS_RM, b"data/b\0"),
                              (W.XS_SET_PERMS, b"data/a\0n5\0"), (W.XS_WATCH, b"data\0t\0"),
                              (W.XS_UNWATCH, b"data\0t\0"), (W.XS_RESET_WATCHES, b"")):
        assert guest.request(msg_type, payload) == (msg_type, b"OK\0"), msg_type


def test_read_has_no_trailing_nul_and_values_are_binary(guest):
    guest.request(W.XS_WRITE, b"data/bin\0\x00\xff\x00")
    assert guest.request(W.XS_READ, b"data/bin\0") == (W.XS_READ, b"\x00\xff\x00")
    guest.request(W.XS_WRITE, b"data/empty\0")
    assert guest.request(W.XS_READ, b"data/empty\0") == (W.XS_READ, b"")


def test_malformed_arguments_are_einval(guest):
    assert err(guest, W.XS_READ, b"name") == "EINVAL"            # no NUL
    assert err(guest, W.XS_READ, b"name\0extra\0") == "EINVAL"   # two args
    assert err(guest, W.XS_READ, b"") == "EINVAL"
    assert err(guest, W.XS_WRITE, b"data/x") == "EINVAL"         # path not terminated
    assert err(guest, W.XS_WATCH, b"data\0") == "EINVAL"
    assert err(guest, W.XS_WATCH, b"data\0t\0extra\0") == "EINVAL"
    assert err(guest, W.XS_DIRECTORY_PART, b"data\0") == "EINVAL"
    assert err(guest, W.XS_READ, b"@releaseDomain\0") == "EINVAL"  # special names only for watches/perms
    assert err(guest, W.XS_GET_PERMS, b"@releaseDomain\0") == "EACCES"


def test_directory_and_e2big(daemon, guest):
    assert guest.call(W.XS_DIRECTORY, "control").split(b"\0")[:1] == [b"shutdown"]
    for i in range(120):
        daemon.dom0.write(f"/big/{'n' * 40}{i:03d}", "")
    assert err(guest, W.XS_DIRECTORY, b"/big\0") in ("EACCES",)   # /big is n0
    daemon.dom0.set_perms("/big", ["r0"])
    assert err(guest, W.XS_DIRECTORY, b"/big\0") == "E2BIG"


def test_directory_part_pages_through_a_large_directory(daemon, guest):
    names = [f"{'n' * 40}{i:03d}" for i in range(120)]
    for n in names:
        daemon.dom0.write(f"/big/{n}", "")
    daemon.dom0.set_perms("/big", ["r0"])
    gen = daemon.store.nodes["/big"].generation
    got, off, rounds = b"", 0, 0
    while True:
        body = guest.call(W.XS_DIRECTORY_PART, "/big", str(off))
        assert len(body) <= W.XENSTORE_PAYLOAD_MAX
        g, rest = body.split(b"\0", 1)
        assert int(g) == gen
        rounds += 1
        if rest.endswith(b"\0\0") or rest == b"\0":
            got += rest[:-1]
            break
        got += rest
        off += len(rest)
    assert rounds == 2
    assert got.split(b"\0")[:-1] == [n.encode() for n in names]
    # past the end: generation and one empty string
    assert guest.call(W.XS_DIRECTORY_PART, "/big", "999999") == str(gen).encode() + b"\0\0"


def test_get_domain_path_and_is_domain_introduced(daemon, guest):
    assert guest.call(W.XS_GET_DOMAIN_PATH, "12") == b"/local/domain/12\0"
    dom0 = make_guest(daemon, 0, populate=False)
    assert dom0.call(W.XS_IS_DOMAIN_INTRODUCED, "5") == b"T\0"
    assert dom0.call(W.XS_IS_DOMAIN_INTRODUCED, "9") == b"F\0"


@pytest.mark.parametrize("msg_type", [W.XS_INTRODUCE, W.XS_RELEASE, W.XS_SET_TARGET, W.XS_CONTROL,
                                      W.XS_RESUME, W.XS_IS_DOMAIN_INTRODUCED, W.XS_GET_FEATURE,
                                      W.XS_SET_FEATURE, W.XS_GET_QUOTA, W.XS_SET_QUOTA])
def test_privileged_types_are_eacces_for_a_domu(guest, msg_type):
    assert err(guest, msg_type, b"5\0") == "EACCES"


@pytest.mark.parametrize("msg_type", [W.XS_WATCH_EVENT, W.XS_ERROR, 20, W.XS_TYPE_COUNT, 1000, W.XS_INVALID])
def test_unknown_types_are_enosys(guest, msg_type):
    assert err(guest, msg_type, b"x\0") == "ENOSYS"


def test_dom0_privileged_operations(daemon):
    g5 = make_guest(daemon, 5)
    g6 = make_guest(daemon, 6)
    dom0 = make_guest(daemon, 0, populate=False)
    assert dom0.call(W.XS_CONTROL, "print", "hello") == b"OK\0"
    assert err(dom0, W.XS_RELEASE, b"0\0") == "EINVAL"
    assert err(dom0, W.XS_RELEASE, b"9\0") == "ENOENT"
    assert dom0.call(W.XS_RESUME, "5") == b"OK\0"
    assert err(dom0, W.XS_GET_QUOTA, b"\0") == "ENOSYS"
    # SET_TARGET: 6 gets the rights of 5 on 5's nodes
    g5.request(W.XS_WRITE, b"data/secret\0s")
    assert err(g6, W.XS_READ, b"/local/domain/5/data/secret\0") == "EACCES"
    assert dom0.call(W.XS_SET_TARGET, "6", "5") == b"OK\0"
    assert g6.call(W.XS_READ, "/local/domain/5/data/secret") == b"s"
    # RELEASE over the wire
    assert dom0.call(W.XS_RELEASE, "6") == b"OK\0"
    assert dom0.call(W.XS_IS_DOMAIN_INTRODUCED, "6") == b"F\0"


# -- watches ---------------------------------------------------------------------------------------------
def test_watch_replies_ok_then_fires_once(guest):
    rid = guest.send(W.XS_WATCH, b"data\0tok\0")
    msgs = guest.messages()
    assert msgs[0] == (W.XS_WATCH, rid, 0, b"OK\0")
    assert msgs[1] == (W.XS_WATCH_EVENT, 0, 0, b"data\0tok\0")   # relative stays relative
    assert len(msgs) == 2


def test_watch_fires_for_node_and_below_not_above(daemon, guest):
    guest.request(W.XS_WATCH, b"/local/domain/5/data/sub\0abs\0")
    drain_events(guest)
    d = daemon.dom0
    d.write("/local/domain/5/data/sub/x/y", "1")
    d.write("/local/domain/5/data/other", "1")
    d.write("/local/domain/5/data", "")        # parent: no event
    d.write("/local/domain/5/data/sub/x/y", "1")   # same value again still fires
    assert drain_events(guest) == [(b"/local/domain/5/data/sub/x/y", b"abs")] * 2


def test_rm_fires_descendants_node_and_ancestor_watches(daemon, guest):
    d = daemon.dom0
    d.write("/local/domain/5/data/t/a/b", "1")
    for w in (b"data\0anc\0", b"data/t\0node\0", b"data/t/a/b\0desc\0", b"data/t/zz\0missing\0"):
        guest.request(W.XS_WATCH, w)
    drain_events(guest)
    d.rm("/local/domain/5/data/t")
    assert sorted(drain_events(guest)) == sorted([(b"data/t", b"anc"), (b"data/t", b"node"),
                                                  (b"data/t/a/b", b"desc")])


def test_set_perms_fires(daemon, guest):
    guest.request(W.XS_WATCH, b"data\0p\0")
    drain_events(guest)
    daemon.dom0.set_perms("/local/domain/5/data", ["n5", "r0"])
    assert drain_events(guest) == [(b"data", b"p")]


def test_duplicate_watch_and_unknown_unwatch(guest):
    assert err(guest, W.XS_WATCH, b"data\0t\0") == ""
    assert err(guest, W.XS_WATCH, b"data\0t\0") == "EEXIST"
    assert err(guest, W.XS_WATCH, b"/local/domain/5/data\0t\0") == "EEXIST"   # same node, other spelling
    assert err(guest, W.XS_WATCH, b"data\0t2\0") == ""
    assert err(guest, W.XS_UNWATCH, b"data\0nope\0") == "ENOENT"
    assert err(guest, W.XS_UNWATCH, b"data\0t\0") == ""
    assert err(guest, W.XS_UNWATCH, b"data\0t\0") == "ENOENT"


def test_no_events_for_nodes_the_watcher_cannot_read(daemon, guest):
    guest.request(W.XS_WATCH, b"/\0all\0")
    drain_events(guest)
    daemon.dom0.write("/secret/a/b", "x")          # /secret n0: invisible to domain 5
    daemon.dom0.write("/local/domain/5/name", "y")  # readable: visible
    assert drain_events(guest) == [(b"/local/domain/5/name", b"all")]


def test_watches_inside_transaction_fire_only_at_commit(daemon, guest):
    watcher = make_guest(daemon, 6)
    daemon.dom0.set_perms("/local/domain/5/data", ["n5", "r6"])
    watcher.request(W.XS_WATCH, b"/local/domain/5/data\0w\0")
    drain_events(watcher)
    tx = int(guest.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    guest.request(W.XS_WRITE, b"data/in-tx\0v", tx)
    assert drain_events(watcher) == []
    guest.request(W.XS_TRANSACTION_END, b"T\0", tx)
    assert drain_events(watcher) == [(b"/local/domain/5/data/in-tx", b"w")]
    tx = int(guest.call(W.XS_TRANSACTION_START, "").rstrip(b"\0"))
    guest.request(W.XS_WRITE, b"data/aborted\0v", tx)
    guest.request(W.XS_TRANSACTION_END, b"F\0", tx)
    assert drain_events(watcher) == []


def test_special_watches(daemon):
    dom0 = make_guest(daemon, 0, populate=False)
    g5 = make_guest(daemon, 5)
    dom0.request(W.XS_WATCH, b"@introduceDomain\0i\0")
    dom0.request(W.XS_WATCH, b"@releaseDomain\0r\0")
    g5.request(W.XS_WATCH, b"@releaseDomain\0mine\0")
    assert drain_events(dom0) == [(b"@introduceDomain", b"i"), (b"@releaseDomain", b"r")]
    assert drain_events(g5) == [(b"@releaseDomain", b"mine")]   # the registration event only
    make_guest(daemon, 7)
    assert drain_events(dom0) == [(b"@introduceDomain", b"i")]
    daemon.release_domain(7)
    assert drain_events(dom0) == [(b"@releaseDomain", b"r")]
    assert drain_events(g5) == []        # a domU does not learn about other domains (XSA-115)
    daemon.dom0.set_perms("@releaseDomain", ["n0", "r5"])
    assert drain_events(g5) == [(b"@releaseDomain", b"mine")]   # SET_PERMS fires like any change
    make_guest(daemon, 8)
    daemon.release_domain(8)
    assert drain_events(g5) == [(b"@releaseDomain", b"mine")]   # unless dom0 grants it


def test_dom0_api_watch_callbacks(daemon, guest):
    seen = []
    h = daemon.dom0.watch("/local/domain/5/data", lambda p, t: seen.append((p, t)), token="tk")
    assert seen == [("/local/domain/5/data", "tk")]
    guest.request(W.XS_WRITE, b"data/x\0v")
    assert seen[-1] == ("/local/domain/5/data/x", "tk")
    daemon.dom0.unwatch(h)
    guest.request(W.XS_WRITE, b"data/y\0v")
    assert len(seen) == 2


def test_dom0_callback_may_use_the_store(daemon):
    d = daemon.dom0

    def cb(path, token):
        if path == "/cb/in":
            d.write("/cb/out", d.read("/cb/in") + b"!")
    d.watch("/cb/in", cb)
    d.write("/cb/in", "hi")
    assert d.read("/cb/out") == b"hi!"


def test_wire_introduce(daemon):
    from miniguest.backends.xenstore.guestring import GuestRing
    dom0 = make_guest(daemon, 0, populate=False)
    assert err(dom0, W.XS_INTRODUCE, b"9\0" + b"4096\0" + b"3\0") == "EINVAL"   # no way to map its page
    assert err(dom0, W.XS_INTRODUCE, b"9\0" + b"4096\0") == "EINVAL"
    pages = {}

    def map_interface(domid, mfn, port):
        g = GuestRing()
        pages[domid] = (g, mfn, port)
        return g.page, g.notify
    daemon.map_interface = map_interface
    dom0.request(W.XS_WATCH, b"@introduceDomain\0i\0")
    drain_events(dom0)
    assert dom0.call(W.XS_INTRODUCE, "9", "4096", "3") == b"OK\0"
    assert drain_events(dom0) == [(b"@introduceDomain", b"i")]
    g, mfn, port = pages[9]
    assert (mfn, port) == (4096, 3)
    g.server_event = daemon.domains[9].on_event
    assert g.call(W.XS_GET_DOMAIN_PATH, "9") == b"/local/domain/9\0"
    # INTRODUCE of a known domain resets its connection (C xenstored's domain_conn_reset)
    g.request(W.XS_WATCH, b"x\0t\0")
    assert dom0.call(W.XS_INTRODUCE, "9", "4096", "3") == b"OK\0"
    assert daemon.domains[9].watches == []
    assert g.get(W.XS_REQ_PROD) == 0 and g.get(W.XS_CONNECTION) == W.XENSTORE_CONNECTED
