"""The ring protocol on a real 4096-byte page with a Python guest: framing, wrap, flow control, and hostile
page contents (which must set the error field and stop only that domain, never raise)."""
from __future__ import annotations

import random
import struct

import pytest
from xs_testlib import make_guest

from miniguest.abi import xs_wire as W

HDR = struct.Struct("<IIII")


def msg(msg_type: int, payload: bytes, req_id: int = 1, tx_id: int = 0) -> bytes:
    return HDR.pack(msg_type, req_id, tx_id, len(payload)) + payload


def test_features_advertised_at_introduce(guest):
    assert guest.get(W.XS_SERVER_FEATURES) == (W.XENSTORE_SERVER_FEATURE_RECONNECTION
                                               | W.XENSTORE_SERVER_FEATURE_ERROR)
    assert guest.get(W.XS_ERROR_FIELD) == 0


def test_several_requests_in_one_notification(guest):
    guest.push(b"".join(msg(W.XS_READ, b"name\0", i) for i in range(1, 6)))
    got = guest.messages()
    assert [(m[0], m[1], m[3]) for m in got] == [(W.XS_READ, i, b"guest5") for i in range(1, 6)]
    assert guest.notified > 0


def test_header_and_body_split_across_notifications(guest):
    data = msg(W.XS_READ, b"name\0", 42)
    for i in range(len(data)):          # one byte per notification
        guest.push(data[i:i + 1])
        if i < len(data) - 1:
            assert guest.messages() == []
    assert guest.messages() == [(W.XS_READ, 42, 0, b"guest5")]


@pytest.mark.parametrize("start", [0, 1000, 0xFFFFFFF0, 0x7FFFFFFF])
def test_messages_across_the_wrap_and_free_running_indexes(daemon, start):
    g = make_guest(daemon, 5, start_index=start)
    for i in range(200):   # ~5 KiB each way: both rings wrap several times
        g.request(W.XS_WRITE, f"data/k{i % 7}\0value-{i}".encode())
        assert g.call(W.XS_READ, f"data/k{i % 7}") == f"value-{i}".encode()
    assert g.get(W.XS_ERROR_FIELD) == 0


def test_replies_larger_than_free_space_wait_their_turn(daemon, guest):
    daemon.dom0.write("/local/domain/5/data/big", b"B" * 1000)
    guest.push(msg(W.XS_READ, b"data/big\0", 1) + msg(W.XS_READ, b"data/big\0", 2))
    # the guest has not consumed anything: the first reply (1016 bytes) fits, the second only partly
    assert (guest.get(W.XS_RSP_PROD) - guest.get(W.XS_RSP_CONS)) & 0xFFFFFFFF == W.XENSTORE_RING_SIZE
    first = guest.messages()
    assert [m[1] for m in first] == [1]
    guest.server_event()                # guest notifies after consuming
    second = guest.messages()
    assert [(m[1], len(m[3])) for m in second] == [(2, 1000)]


def test_watch_events_larger_than_free_space_wait(daemon, guest):
    guest.request(W.XS_WATCH, b"data\0" + b"T" * 900 + b"\0")
    guest.messages()
    daemon.dom0.write("/local/domain/5/data/a", "1")
    daemon.dom0.write("/local/domain/5/data/b", "1")
    daemon.dom0.write("/local/domain/5/data/c", "1")
    got = []
    for _ in range(10):
        got += guest.messages()
        guest.server_event()
    paths = [m[3].split(b"\0")[0] for m in got if m[0] == W.XS_WATCH_EVENT]
    assert paths == [b"data/a", b"data/b", b"data/c"]


def test_partial_message_is_kept_until_complete(guest):
    data = msg(W.XS_WRITE, b"data/p\0" + b"x" * 500, 9)
    guest.push(data[:10])
    guest.push(data[10:300])
    assert guest.messages() == []
    guest.push(data[300:])
    assert guest.messages() == [(W.XS_WRITE, 9, 0, b"OK\0")]


# -- hostile page contents ------------------------------------------------------------------------------
def stopped(g, code):
    assert g.get(W.XS_ERROR_FIELD) == code
    before = g.get(W.XS_RSP_PROD)
    g.push(msg(W.XS_READ, b"name\0", 77), kick=False)
    g.server_event()
    assert g.get(W.XS_RSP_PROD) == before    # no more service


def test_request_indexes_too_far_apart(daemon):
    g = make_guest(daemon, 5)
    other = make_guest(daemon, 6)
    g.put(W.XS_REQ_PROD, g.get(W.XS_REQ_CONS) + W.XENSTORE_RING_SIZE + 1)
    g.server_event()
    stopped(g, W.XENSTORE_ERROR_RINGIDX)
    assert other.call(W.XS_READ, "name") == b"guest6"   # the others keep being served


def test_response_indexes_corrupted(daemon, guest):
    daemon.dom0.write("/local/domain/5/data/big", b"B" * 1000)
    guest.put(W.XS_RSP_CONS, guest.get(W.XS_RSP_PROD) + 5)   # consumer ahead of producer
    guest.push(msg(W.XS_READ, b"data/big\0"))
    stopped(guest, W.XENSTORE_ERROR_RINGIDX)


def test_oversized_payload_is_a_protocol_error(daemon):
    g = make_guest(daemon, 5)
    other = make_guest(daemon, 6)
    g.push(HDR.pack(W.XS_WRITE, 1, 0, W.XENSTORE_PAYLOAD_MAX + 1))
    stopped(g, W.XENSTORE_ERROR_PROTO)
    assert other.call(W.XS_READ, "name") == b"guest6"
    assert daemon.dom0.read("/local/domain/5/name") == b"guest5"


def test_maximum_payload_is_fine(guest):
    payload = b"data/m\0" + b"v" * (W.XENSTORE_PAYLOAD_MAX - 7)
    assert guest.request(W.XS_WRITE, payload) == (W.XS_ERROR, b"ENOSPC\0")   # node-size quota, not PROTO
    assert guest.get(W.XS_ERROR_FIELD) == 0


def test_reconnect_resets_the_connection(daemon, guest):
    guest.request(W.XS_WATCH, b"data\0t\0")
    tx = guest.call(W.XS_TRANSACTION_START, "")
    guest.push(HDR.pack(W.XS_WRITE, 1, 0, W.XENSTORE_PAYLOAD_MAX + 1))
    assert guest.get(W.XS_ERROR_FIELD) == W.XENSTORE_ERROR_PROTO
    guest.put(W.XS_REQ_PROD, 12345)
    guest.put(W.XS_CONNECTION, W.XENSTORE_RECONNECT)
    n = guest.notified
    guest.server_event()
    assert guest.get(W.XS_CONNECTION) == W.XENSTORE_CONNECTED
    assert guest.notified == n + 1
    for off in (W.XS_REQ_CONS, W.XS_REQ_PROD, W.XS_RSP_CONS, W.XS_RSP_PROD, W.XS_ERROR_FIELD):
        assert guest.get(off) == 0
    guest._rx.clear()
    guest._pending.clear()
    assert guest.call(W.XS_READ, "name") == b"guest5"
    assert guest.conn.watches == [] and guest.conn.transactions == {}
    assert tx == b"1\0"


def test_released_domain_is_not_served(daemon, guest):
    daemon.release_domain(5)
    before = guest.get(W.XS_RSP_PROD)
    guest.push(msg(W.XS_READ, b"name\0"))
    assert guest.get(W.XS_RSP_PROD) == before


def test_random_page_contents_never_raise(daemon):
    """Fuzz: arbitrary bytes and indexes in the page, notified repeatedly. on_event must never raise, and
    the daemon must keep serving another domain."""
    rng = random.Random(1234)
    other = make_guest(daemon, 6)
    g = make_guest(daemon, 5)
    for round_ in range(300):
        choice = rng.random()
        if choice < 0.3:
            g.buf[:] = bytes(rng.getrandbits(8) for _ in range(4096))
        elif choice < 0.6:
            off = rng.choice([W.XS_REQ_CONS, W.XS_REQ_PROD, W.XS_RSP_CONS, W.XS_RSP_PROD, W.XS_CONNECTION])
            g.put(off, rng.choice([0, 1, 1023, 1024, 1025, 0xFFFFFFFF, rng.getrandbits(32)]))
        else:
            t = rng.choice([rng.randrange(30), W.XS_WRITE, W.XS_WATCH, W.XS_TRANSACTION_END])
            body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(40)))
            g.push(HDR.pack(t, rng.getrandbits(32), rng.choice([0, 1, rng.getrandbits(32)]),
                            rng.choice([len(body), rng.getrandbits(32)])) + body, kick=False)
        g.conn.on_event()                  # must not raise
        if rng.random() < 0.05:
            g.put(W.XS_CONNECTION, W.XENSTORE_RECONNECT)
            g.conn.on_event()
            assert g.get(W.XS_CONNECTION) == W.XENSTORE_CONNECTED
    assert other.call(W.XS_READ, "name") == b"guest6"
    assert daemon.dom0.read("/local/domain/6/name") == b"guest6"
