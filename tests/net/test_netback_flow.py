"""Flow control between the guest and the host side: neither a guest that stops posting rx buffers nor a host
side that stops reading makes miniguest hold unbounded memory, and nothing is lost when both catch up. Also
what the guest without feature-rx-notify still gets, and snapshots of a domain whose vif is connected."""
from __future__ import annotations

import socket

import pytest
from netlib import GUEST_MAC, NetGuest, udp_frame

from miniguest.abi.netif import NETIF_RSP_OKAY, RX_REQUEST
from miniguest.backends.netback import links, vif as vifmod
from miniguest.regress.snapshot import Snapshot, SnapshotError


def test_a_guest_that_posts_no_rx_buffers_stops_the_host_side_being_read(net, monkeypatch):
    monkeypatch.setattr(vifmod, "RX_QUEUE_BYTES", 20_000)
    frames = [udp_frame(b"%04d" % i + b"." * 1400, dmac=GUEST_MAC) for i in range(40)]   # 58 KB
    for f in frames:
        net.wire.send(f)
    net.pump(0.2)
    assert net.vif.link_paused                                     # past the limit: not read any more
    assert net.vif.rx_bytes_queued <= 20_000 + 1514 + 256 * 1024   # at most what one read brought in
    got = []
    for _ in range(20):
        net.nf.post_rx(16)
        net.pump(0.05)
        got += net.nf.received()
        if len(got) == len(frames):
            break
    assert got == frames                                          # nothing lost, in order
    assert not net.vif.link_paused and net.vif.rx_bytes_queued == 0


def test_a_host_side_that_stops_reading_leaves_the_requests_on_the_ring(net, monkeypatch):
    monkeypatch.setattr(links, "OUT_LIMIT", 16_384)
    net.wire.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    link = net.vif.link
    link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frames = [udp_frame(b"%04d" % i + b"x" * 1400) for i in range(100)]
    for f in frames:
        net.nf.send(f)
    answered = len(net.nf.tx_responses())
    assert net.vif.queues[0].tx_stalled and answered < len(frames)     # the rest wait on the ring
    assert len(link._out) < 16_384 + 1600
    got = []
    for _ in range(200):
        got += net.wire.frames(wait=0.01)
        net.pump(0.01)
        answered += len(net.nf.tx_responses())
        if len(got) == len(frames):
            break
    assert got == frames and answered == len(frames)


def test_without_feature_rx_notify_buffers_are_found_when_the_guest_goes_idle(tmp_path):
    net = NetGuest(str(tmp_path), features={"feature-rx-notify": 0})
    try:
        frame = udp_frame(b"polled", dmac=GUEST_MAC)
        net.wire.send(frame)
        net.pump(0.05)
        rx = net.nf.q[0]["rx"]
        mfn = net.g.alloc_page()
        ref = net.g.grant(mfn)
        net.nf.q[0]["rx_buffers"][0] = (mfn, ref)
        rx.put_request(RX_REQUEST.pack(0, 0, ref))
        rx.set_u32(0, rx.req_prod_pvt)                               # posted, but no notification
        assert net.nf.received() == []
        for idle in net.dom.on_idle:                                 # what the run loop calls when idle
            idle()
        assert net.nf.received() == [frame]
    finally:
        net.close()


def test_a_domain_with_a_connected_vif_cannot_be_snapshotted_but_says_why(net):
    net.nf.send(udp_frame(b"x"))
    assert net.nf.tx_responses()[0][1] == NETIF_RSP_OKAY
    with pytest.raises(SnapshotError, match="grants mapped"):
        Snapshot.capture(net.dom)
