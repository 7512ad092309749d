"""Hostile frontends: every rule of netif.h and io/ring.h broken on purpose. A bad frame gets the protocol's
error status (NETIF_RSP_ERROR) and the vif carries on; a frontend that breaks the protocol has its vif
disabled with one clear log line (as Linux's xenvif_fatal_tx_err) or its connection refused with
xenbus_dev_fatal. The host never raises, and the guest's other devices (its store, a second vif) keep
working."""
from __future__ import annotations

import struct

import pytest
from netlib import GUEST_MAC, NetGuest, udp_frame

from miniguest.abi.netif import (EXTRA_GSO, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_extra_info,
                                 NETTXF_more_data, TX_REQUEST, XEN_NETIF_EXTRA_TYPE_GSO)
from miniguest.abi.ring import SRING_REQ_PROD
from miniguest.toolstack.network import VifSpec, add_vifs


def disabled_with(net, words: str) -> None:
    """The vif stopped, said why once, and answers nothing more -- the rest of the guest carries on."""
    assert net.vif.disabled and words in net.vif.disabled
    lines = [m for m in net.dom.messages if "disabling the device" in m]
    assert len(lines) == 1 and words in lines[0], net.dom.messages
    before = net.nf.q[0]["tx"].u32(8)
    net.wire.frames(wait=0.05)
    net.nf.send(udp_frame(b"after"))
    assert net.nf.q[0]["tx"].u32(8) == before                       # no response: the vif is dead
    assert net.wire.frames(wait=0.1) == []
    assert net.g.read("name") is not None                            # the store still answers


def still_works(net) -> None:
    assert not net.vif.disabled
    frame = udp_frame(b"still alive")
    net.wire.frames()
    ids = net.nf.send(frame)
    assert net.nf.tx_responses()[-1] == (ids[0], NETIF_RSP_OKAY)
    assert frame in net.wire.frames(wait=2)


def req(gref: int, offset: int, flags: int, rid: int, size: int) -> bytes:
    return TX_REQUEST.pack(gref, offset, flags, rid, size)


# -- ring indexes -----------------------------------------------------------------------------------------
def test_tx_ring_index_more_than_a_ring_ahead(net):
    net.nf.q[0]["tx"].set_u32(SRING_REQ_PROD, 1000)
    net.g.notify(net.nf.q[0]["tx_port"])
    net.nf.settle()
    disabled_with(net, "impossible number of tx requests")


def test_rx_ring_index_more_than_a_ring_ahead(net):
    net.nf.q[0]["rx"].set_u32(SRING_REQ_PROD, 5000)
    net.wire.send(udp_frame(b"x", dmac=GUEST_MAC))
    net.pump(0.1)
    disabled_with(net, "impossible number of rx requests")


def test_a_ring_already_overflowing_at_connect_is_refused(tmp_path):
    net = NetGuest(str(tmp_path), connect=False)
    try:
        q = net.nf.setup_queue()
        net.nf.q = [q]
        q["tx"].set_u32(SRING_REQ_PROD, 777)
        net.nf.write_queue(q, net.nf.node)
        net.g.write("device/vif/0/request-rx-copy", 1)
        net.g.write("device/vif/0/state", 4)
        assert net.backend("state") == "5"                           # xenbus_dev_fatal: Closing
        assert "more than a ring ahead" in net.error()
        assert net.dom.frames and all(net.g.end_access(r) for r in (q["tx_ref"], q["rx_ref"]))
    finally:
        net.close()


# -- chains -----------------------------------------------------------------------------------------------------
def test_more_slots_than_a_frame_may_use_is_an_error_for_that_frame(net):
    frame = udp_frame(b"s" * 1000)
    ids = net.nf.send(frame, pieces=[100] + [45] * 19)               # XEN_NETIF_NR_SLOTS_MIN + 1 fragments
    assert net.nf.tx_responses() == [(i, NETIF_RSP_ERROR) for i in ids]
    assert net.wire.frames(wait=0.1) == []
    assert any("more than 18 fragments" in m for m in net.dom.messages)
    still_works(net)


def test_eighteen_fragments_after_the_first_slot_are_fine(net):
    frame = udp_frame(b"s" * 1000)
    ids = net.nf.send(frame, pieces=[142] + [50] * 18)
    assert net.nf.tx_responses() == [(i, NETIF_RSP_OKAY) for i in ids]
    assert net.wire.frames(wait=2) == [frame]


def test_a_chain_of_more_than_twenty_slots_is_an_attack(net):
    net.nf.send(udp_frame(b"s" * 1000), pieces=[100] + [40] * 21)
    disabled_with(net, "more than 20 fragments")


def test_a_chain_that_never_ends(net):
    ref = net.nf.tx_buffer(udp_frame(b"x"))
    net.nf.raw_tx([req(ref, 0, NETTXF_more_data, 1, 200), req(ref, 0, NETTXF_more_data, 2, 50)])
    disabled_with(net, "slots but only")


def test_a_fragment_larger_than_the_rest_of_the_frame(net):
    frame = udp_frame(b"y" * 100)
    ref = net.nf.tx_buffer(frame)
    net.nf.raw_tx([req(ref, 0, NETTXF_more_data, 1, len(frame)), req(ref, 0, 0, 2, len(frame) + 10)])
    assert net.nf.tx_responses() == [(1, NETIF_RSP_ERROR), (2, NETIF_RSP_ERROR)]
    still_works(net)


# -- sizes and offsets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 13])
def test_frames_shorter_than_an_ethernet_header(net, size):
    ref = net.nf.tx_buffer(b"z" * 64)
    net.nf.raw_tx([req(ref, 0, 0, 9, size)])
    assert net.nf.tx_responses() == [(9, NETIF_RSP_ERROR)]
    assert net.wire.frames(wait=0.1) == []
    still_works(net)


def test_a_first_slot_past_the_end_of_its_page(net):
    ref = net.nf.tx_buffer(b"z" * 64)
    net.nf.raw_tx([req(ref, 4000, 0, 3, 200)])
    disabled_with(net, "crosses its page")


def test_a_fragment_past_the_end_of_its_page(net):
    frame = udp_frame(b"q" * 200)
    ref = net.nf.tx_buffer(frame)
    net.nf.raw_tx([req(ref, 0, NETTXF_more_data, 1, len(frame)), req(ref, 4090, 0, 2, 100)])
    disabled_with(net, "crosses its page")


def test_the_largest_frame_netif_can_describe(net):
    """size is 16 bits: 65535 bytes over 17 slots is legal and arrives whole."""
    frame = udp_frame(b"L" * (65535 - 42))
    ids = net.nf.send(frame, pieces=[4096] * 15 + [65535 - 15 * 4096])
    assert [s for _, s in net.nf.tx_responses()] == [NETIF_RSP_OKAY] * len(ids)
    got = net.wire.frames(wait=2)
    assert got == [frame]


# -- grants ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gref", [5, 7000, 0xFFFFFFFF])              # not granted / past the table / absurd
def test_a_tx_grant_that_cannot_be_copied(net, gref):
    net.nf.raw_tx([req(gref, 0, 0, 4, 60)])
    assert net.nf.tx_responses() == [(4, NETIF_RSP_ERROR)]
    assert net.wire.frames(wait=0.1) == []
    still_works(net)


def test_a_bad_grant_in_the_middle_of_a_chain_fails_that_slot_only(net):
    frame = udp_frame(b"m" * 300)
    good = net.nf.tx_buffer(frame)
    net.nf.raw_tx([req(good, 0, NETTXF_more_data, 1, len(frame)), req(6000, 0, 0, 2, 100)])
    assert net.nf.tx_responses() == [(1, NETIF_RSP_OKAY), (2, NETIF_RSP_ERROR)]
    assert net.wire.frames(wait=0.1) == []
    still_works(net)


def test_rx_buffers_that_cannot_be_written(net):
    ro = net.g.grant(net.g.alloc_page(), readonly=True)
    net.nf.post_rx(1, gref=ro)                                       # read-only
    net.nf.post_rx(1, gref=6666)                                     # not granted
    for i in range(2):
        net.wire.send(udp_frame(b"lost %d" % i, dmac=GUEST_MAC))
    net.pump(0.1)
    assert [r[3] for r in net.nf.rx_responses()] == [NETIF_RSP_ERROR, NETIF_RSP_ERROR]
    net.nf.post_rx(1)
    good = udp_frame(b"kept", dmac=GUEST_MAC)
    net.wire.send(good)
    net.pump(0.1)
    assert net.nf.received() == [good]
    assert not net.vif.disabled


# -- extra-info slots -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("etype", [0, 5, 200])
def test_an_extra_info_slot_of_an_unknown_type(net, etype):
    ref = net.nf.tx_buffer(udp_frame(b"x"))
    net.nf.raw_tx([req(ref, 0, NETTXF_extra_info, 1, 60), bytes([etype, 0]) + bytes(6)])
    disabled_with(net, f"invalid extra type {etype}")


def test_an_extra_info_slot_that_is_missing(net):
    ref = net.nf.tx_buffer(udp_frame(b"x"))
    net.nf.raw_tx([req(ref, 0, NETTXF_extra_info, 1, 60)])
    disabled_with(net, "missing extra info")


@pytest.mark.parametrize("size,gtype,words", [(0, 1, "GSO size must not be zero"), (1400, 9, "bad GSO type 9")])
def test_a_bad_gso_extra(net, size, gtype, words):
    frame = udp_frame(b"g" * 100)
    net.nf.send(frame, extras=[EXTRA_GSO.pack(XEN_NETIF_EXTRA_TYPE_GSO, 0, size, gtype, 0, 0)])
    disabled_with(net, words)


def test_a_gso_extra_on_a_frame_that_is_not_tcp_drops_it(net):
    ids = net.nf.send(udp_frame(b"u" * 3000), extras=[EXTRA_GSO.pack(XEN_NETIF_EXTRA_TYPE_GSO, 0, 1400, 1, 0, 0)])
    assert net.nf.tx_responses() == [(ids[0], NETIF_RSP_OKAY), (0, NETIF_RSP_NULL)]
    assert net.wire.frames(wait=0.1) == []
    still_works(net)


# -- the store: queues, rings, event channels -------------------------------------------------------------------
def connect_with(tmp_path, nodes: dict, queues: int = 1):
    net = NetGuest(str(tmp_path), connect=False, queues=queues)
    qs = [net.nf.setup_queue() for _ in range(queues)]
    net.nf.q = qs
    if queues == 1:
        net.nf.write_queue(qs[0], net.nf.node)
    else:
        net.g.write("device/vif/0/multi-queue-num-queues", queues)
        for i, q in enumerate(qs):
            net.nf.write_queue(q, f"{net.nf.node}/queue-{i}")
    net.g.write("device/vif/0/request-rx-copy", 1)
    for key, value in nodes.items():
        if value is None:
            net.g.rm(f"device/vif/0/{key}")
        else:
            net.g.write(f"device/vif/0/{key}", value)
    net.g.write("device/vif/0/state", 4)
    return net


@pytest.mark.parametrize("nodes,words", [
    ({"multi-queue-num-queues": 9}, "exceeding the maximum of 4"),
    ({"multi-queue-num-queues": 0}, "requested 0 queues"),
    ({"request-rx-copy": 0}, "rx-copy"),
    ({"tx-ring-ref": None}, "reading /local/domain/1/device/vif/0/ring-ref"),
    ({"tx-ring-ref": 4000}, "mapping shared-frames 4000"),
    ({"event-channel": None}, "event-channel(-tx/rx)"),
    ({"event-channel": 999}, "port tx 999"),
])
def test_a_frontend_whose_details_are_unusable_is_refused(tmp_path, nodes, words):
    net = connect_with(tmp_path, nodes)
    try:
        assert net.backend("state") == "5", net.dom.messages       # Closing, not Connected
        assert words in (net.error() or ""), net.error()
        assert not net.vif.connected and net.vif.queues == []
        assert net.g.read("name") is not None
    finally:
        net.close()


def test_more_queues_asked_for_than_described(tmp_path):
    net = connect_with(tmp_path, {"multi-queue-num-queues": 3}, queues=2)
    try:
        assert net.backend("state") == "5"
        assert "queue-2/ring-ref" in net.error()
        assert net.dom.host.services["xenbus-backend"].devices[("vif", net.dom.domid, 0)].nr_mapped == 0
    finally:
        net.close()


# -- the host side -----------------------------------------------------------------------------------------
def test_a_peer_announcing_an_oversized_frame_is_cut_off(net):
    net.wire.send_raw(struct.pack(">I", 1 << 30))
    net.pump(0.1)
    assert any("frame (more than" in m for m in net.dom.messages)
    assert not net.vif.disabled                                     # the guest did nothing wrong
    assert net.nf.send(udp_frame(b"into the void")) and net.nf.tx_responses()[-1][1] == NETIF_RSP_OKAY


def test_a_disabled_vif_leaves_the_other_vif_working(tmp_path):
    net = NetGuest(str(tmp_path))
    try:
        from netlib import Wire
        wire2 = Wire(str(tmp_path / "wire2.sock"))
        add_vifs(net.dom, [VifSpec(net=f"socket:{wire2.path}", mac="00:16:3e:00:00:02")])
        wire2.accept()
        from pynetfront import PyNetfront
        nf2 = PyNetfront(net.g, devid=1)
        nf2.connect()
        net.nf.q[0]["tx"].set_u32(SRING_REQ_PROD, 4096)
        net.g.notify(net.nf.q[0]["tx_port"])
        net.nf.settle()
        assert net.vif.disabled
        frame = udp_frame(b"vif 1 lives")
        nf2.send(frame)
        assert wire2.frames(wait=2) == [frame]
        wire2.close()
    finally:
        net.close()


def test_a_frontend_that_starts_over_without_closing(net):
    """Frontend Initialising while connected (a guest rebooted into a new kernel): netback walks Closing,
    Closed, InitWait -- the old rings let go -- and connects the new frontend."""
    old = [net.nf.q[0]["tx_ref"], net.nf.q[0]["rx_ref"]]
    net.g.write("device/vif/0/state", 1)
    assert net.backend("state") == "2"
    assert all(net.g.end_access(r) for r in old)
    net.nf.connect()
    still_works(net)
