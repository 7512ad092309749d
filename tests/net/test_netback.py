"""netback with a frontend played from Python (tests/pynetfront.py) and its host side on a Unix socket the
test holds: what the frontend finds in the store, what reaches the wire, what the guest receives, and the
ring and notification rules of netif.h and io/ring.h."""
from __future__ import annotations

import struct

import pytest
from netlib import (GUEST_IP, GUEST_MAC, PEER_IP, PEER_MAC, NetGuest, ether, ipv4, udp_checksum_ok,
                    udp_frame)

from miniguest.abi.netif import (EXTRA_GSO, EXTRA_MCAST, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_more_data,
                                 NETTXF_csum_blank, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
                                 XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_GSO_TYPE_TCPV4)
from miniguest.abi.ring import SRING_REQ_EVENT, SRING_RSP_EVENT
from miniguest.backends.netback.frames import checksum_ok, internet_checksum, ones_sum


def test_the_backend_advertises_netbacks_features_and_connects(net):
    assert net.backend("state") == "4"
    assert net.backend("hotplug-status") == "connected"
    assert net.backend("mac") == "00:16:3e:00:00:01"
    for key, value in {"feature-sg": "1", "feature-rx-copy": "1", "feature-rx-flip": "0",
                       "feature-gso-tcpv4": "1", "feature-ipv6-csum-offload": "1",
                       "feature-multicast-control": "1", "feature-split-event-channels": "1",
                       "multi-queue-max-queues": "4"}.items():
        assert net.backend(key) == value, key
    assert net.g.read("device/vif/0/mac") == "00:16:3e:00:00:01"        # the frontend's copy (libxl)
    assert net.vif.mac == GUEST_MAC and net.vif.connected


def test_a_frame_in_one_slot_reaches_the_wire_and_is_answered(net):
    frame = udp_frame(b"hello wire")
    ids = net.nf.send(frame)
    assert net.nf.tx_responses() == [(ids[0], NETIF_RSP_OKAY)]
    assert net.wire.frames(wait=2) == [frame]
    assert net.vif.stats.tx_frames == 1 and net.vif.stats.tx_bytes == len(frame)


def test_a_frame_over_several_slots_is_put_back_together(net):
    frame = udp_frame(bytes(range(256)) * 20)                      # 5162 bytes
    ids = net.nf.send(frame, pieces=[1000, 3000, len(frame) - 4000], offset=96)
    assert net.nf.tx_responses() == [(i, NETIF_RSP_OKAY) for i in ids]
    assert net.wire.frames(wait=2) == [frame]


def test_a_checksum_left_to_the_backend_is_filled_in(net):
    frame = udp_frame(b"offloaded" * 50, csum="partial")
    assert not udp_checksum_ok(frame)
    net.nf.send(frame, flags=NETTXF_csum_blank)
    (out,) = net.wire.frames(wait=2)
    assert udp_checksum_ok(out) and out[:40] == frame[:40] and out[42:] == frame[42:]


def test_an_ipv6_tcp_checksum_left_to_the_backend_is_filled_in(net):
    src, dst = bytes(15) + b"\1", bytes(15) + b"\2"
    payload = b"tcp over v6" * 30
    tcp = bytearray(struct.pack(">HHIIBBHHH", 40000, 80, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload)
    s = ones_sum(src + dst) + 6 + len(tcp)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into(">H", tcp, 16, s)                             # the pseudo-header sum only
    ip6 = struct.pack(">IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
    frame = ether(PEER_MAC, GUEST_MAC, 0x86DD, ip6 + bytes(tcp))
    assert checksum_ok(frame) is False
    net.nf.send(frame, flags=NETTXF_csum_blank)
    (out,) = net.wire.frames(wait=2)
    assert checksum_ok(out) is True


def test_frames_from_the_wire_are_copied_into_the_buffers_the_guest_posted(net):
    net.nf.post_rx(8)
    frames = [udp_frame(b"to the guest %d" % i, src=PEER_IP, dst=GUEST_IP, smac=PEER_MAC, dmac=GUEST_MAC)
              for i in range(3)]
    for f in frames:
        net.wire.send(f)
    net.pump(0.2)
    rsps = net.nf.rx_responses()
    assert [r[0] for r in rsps] == [0, 1, 2]                        # each in its request's slot, id echoed
    assert all(r[1] == 0 and r[3] == len(f) for r, f in zip(rsps, frames))
    assert net.g.pending(net.nf.q[0]["rx_port"])                  # the guest was notified
    got = []
    for rid, off, flags, status in rsps:
        mfn, _ = net.nf.q[0]["rx_buffers"][rid]
        got.append(bytes(net.g.page(mfn)[off:off + status]))
    assert got == frames


def test_a_large_frame_from_the_wire_spans_slots_with_scatter_gather(net):
    net.nf.post_rx(4)
    big = udp_frame(b"J" * 9000, src=PEER_IP, dst=GUEST_IP, smac=PEER_MAC, dmac=GUEST_MAC)
    net.wire.send(big)
    net.pump(0.2)
    rsps = net.nf.rx_responses()
    assert [(r[2] & NETRXF_more_data, r[3]) for r in rsps] == [(NETRXF_more_data, 4096), (NETRXF_more_data, 4096),
                                                             (0, len(big) - 8192)]
    net.nf.q[0]["rx"].rsp_cons -= 3                                # read them again, assembled
    assert net.nf.received() == [big]


def test_without_scatter_gather_a_frame_larger_than_the_mtu_is_dropped(tmp_path):
    net = NetGuest(str(tmp_path), features={"feature-sg": 0})
    try:
        net.nf.post_rx(4)
        net.wire.send(udp_frame(b"J" * 3000, dmac=GUEST_MAC))
        small = udp_frame(b"small", dmac=GUEST_MAC)
        net.wire.send(small)
        net.pump(0.2)
        assert net.nf.received() == [small]
        assert net.vif.stats.rx_dropped == 1
        assert any("without feature-sg" in m for m in net.dom.messages)
    finally:
        net.close()


def test_frames_wait_for_rx_buffers_and_the_backend_asks_to_be_told(net):
    frame = udp_frame(b"early", dmac=GUEST_MAC)
    net.wire.send(frame)
    net.pump(0.1)
    rx = net.nf.q[0]["rx"]
    assert net.nf.received() == []
    assert rx.u32(SRING_REQ_EVENT) == rx.u32(0) + 1                  # req_event = req_prod + 1
    net.nf.post_rx(1)                                               # crosses req_event: the guest notifies
    assert net.nf.received() == [frame]


def test_the_guest_is_notified_only_when_it_asked(net):
    port = net.nf.q[0]["tx_port"]
    tx = net.nf.q[0]["tx"]
    tx.set_u32(SRING_RSP_EVENT, 1000)                               # "tell me at response 1000"
    net.nf.send(udp_frame(b"quiet"))
    assert not net.g.pending(port)
    assert tx.u32(8) == 1                                           # the response is there all the same
    net.nf.tx_responses()                                           # sets rsp_event = rsp_cons + 1
    net.nf.send(udp_frame(b"loud"))
    assert net.g.pending(port)


def test_two_queues_and_split_event_channels(tmp_path):
    net = NetGuest(str(tmp_path), queues=2, split=True)
    try:
        assert net.backend("state") == "4" and len(net.vif.queues) == 2
        assert net.g.read("device/vif/0/queue-1/event-channel-rx") is not None
        a, b = udp_frame(b"queue 0"), udp_frame(b"queue 1", sport=40001)
        net.nf.send(a, q=0)
        net.nf.send(b, q=1)
        assert net.nf.tx_responses(0)[0][1] == 0 and net.nf.tx_responses(1)[0][1] == 0
        assert sorted(net.wire.frames(wait=2) + net.wire.frames(wait=0.2)) == sorted([a, b])
        for q in (0, 1):
            net.nf.post_rx(8, q=q)
        flows = [udp_frame(b"flow %d" % i, sport=1000 + i, dmac=GUEST_MAC) for i in range(16)]
        for f in flows:
            net.wire.send(f)
        net.pump(0.2)
        got0, got1 = net.nf.received(0), net.nf.received(1)
        assert sorted(got0 + got1) == sorted(flows)
        assert got0 and got1                                        # spread over both queues by flow
    finally:
        net.close()


def test_the_multicast_filter_the_frontend_asked_for(tmp_path):
    net = NetGuest(str(tmp_path), features={"request-multicast-control": 1})
    try:
        group = bytes.fromhex("01005e000001")
        add = EXTRA_MCAST.pack(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, 0, group)
        ids = net.nf.send(udp_frame(b""), extras=[add])
        assert net.nf.tx_responses() == [(ids[0], NETIF_RSP_OKAY), (0, NETIF_RSP_NULL)]
        assert net.wire.frames(wait=0.1) == []                      # a filter update, not a frame
        net.nf.post_rx(8)
        wanted = udp_frame(b"group", dmac=group)
        other = udp_frame(b"other group", dmac=bytes.fromhex("01005e000002"))
        bcast = udp_frame(b"broadcast", dmac=b"\xff" * 6)
        for f in (wanted, other, bcast):
            net.wire.send(f)
        net.pump(0.2)
        assert net.nf.received() == [wanted, bcast]
        net.nf.send(udp_frame(b""), extras=[EXTRA_MCAST.pack(XEN_NETIF_EXTRA_TYPE_MCAST_DEL, 0, group)])
        net.wire.send(wanted)
        net.pump(0.1)
        assert net.nf.received() == []
    finally:
        net.close()


def test_a_gso_frame_is_cut_into_segments(net):
    payload = bytes(i % 251 for i in range(5000))
    tcp = bytearray(struct.pack(">HHIIBBHHH", 40000, 80, 1000, 0, 5 << 4, 0x19, 65535, 0, 0) + payload)
    frame = ether(PEER_MAC, GUEST_MAC, 0x0800, ipv4(GUEST_IP, PEER_IP, 6, bytes(tcp), ident=7))
    gso = EXTRA_GSO.pack(XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448, XEN_NETIF_GSO_TYPE_TCPV4, 0, 0)
    net.nf.send(frame, flags=NETTXF_csum_blank, pieces=[4000, len(frame) - 4000], extras=[gso])
    segs = net.wire.frames(wait=2)
    while len(segs) < 4:
        more = net.wire.frames(wait=1)
        assert more
        segs += more
    assert [len(s) - 54 for s in segs] == [1448, 1448, 1448, 656]
    assert b"".join(s[54:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert struct.unpack(">I", s[38:42])[0] == 1000 + i * 1448        # sequence numbers
        assert s[47] == (0x19 if i == 3 else 0x10)                        # FIN/PSH on the last only
        assert struct.unpack(">H", s[18:20])[0] == 7 + i                   # IPv4 ids
        assert internet_checksum(s[14:34]) == 0 and checksum_ok(s)


def test_the_vif_writes_a_pcap_of_both_directions(tmp_path):
    pcap = tmp_path / "vif.pcap"
    net = NetGuest(str(tmp_path), spec={"pcap": str(pcap)})
    try:
        out = udp_frame(b"out")
        net.nf.send(out)
        net.nf.post_rx(2)
        back = udp_frame(b"back", dmac=GUEST_MAC)
        net.wire.send(back)
        net.pump(0.1)
    finally:
        net.close()
    data = pcap.read_bytes()
    assert struct.unpack("<IHHiIII", data[:24]) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    frames, pos = [], 24
    while pos < len(data):
        _, _, caplen, origlen = struct.unpack("<IIII", data[pos:pos + 16])
        frames.append(data[pos + 16:pos + 16 + caplen])
        pos += 16 + caplen
    assert frames == [out, back]


def test_the_frontend_closes_and_connects_again(net):
    nf, g = net.nf, net.g
    refs = [nf.q[0]["tx_ref"], nf.q[0]["rx_ref"]]
    g.write("device/vif/0/state", 5)
    assert net.backend("state") == "5"
    g.write("device/vif/0/state", 6)
    assert net.backend("state") == "6"
    assert all(g.end_access(r) for r in refs)                        # the backend let go of the rings
    g.write("device/vif/0/state", 1)
    assert net.backend("state") == "2"                               # InitWait: ready again
    nf.connect()
    assert net.backend("state") == "4"
    frame = udp_frame(b"second life")
    nf.send(frame)
    assert net.wire.frames(wait=2) == [frame]
