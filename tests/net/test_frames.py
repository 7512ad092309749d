"""Invariants of netback's frame handling (backends/netback/frames.py), as property tests: the checksum it
fills in for NETTXF_csum_blank always verifies whatever the guest left in the field, the ones' complement sum
is RFC 1071's, and software GSO gives back exactly the payload, in segments of at most the MSS, each with
valid checksums."""
from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from netlib import GUEST_IP, GUEST_MAC, PEER_IP, PEER_MAC, ether, ipv4

from miniguest.backends.netback.frames import (checksum_ok, complete_checksum, internet_checksum, ones_sum,
                                               segment_tcp)


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack(">H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


@given(st.binary(max_size=3000))
def test_the_ones_complement_sum_is_rfc_1071s(data):
    assert ones_sum(data) == rfc1071(data)


def tcp_frame(payload: bytes, v6: bool, field: int, flags: int = 0x18, seq: int = 1) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", 1234, 80, seq, 0, 5 << 4, flags, 8192, field, 0) + payload
    if v6:
        src, dst = bytes(15) + b"\1", bytes(15) + b"\2"
        ip6 = struct.pack(">IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
        return ether(PEER_MAC, GUEST_MAC, 0x86DD, ip6 + tcp)
    return ether(PEER_MAC, GUEST_MAC, 0x0800, ipv4(GUEST_IP, PEER_IP, 6, tcp))


def udp_frame(payload: bytes, field: int) -> bytes:
    return ether(PEER_MAC, GUEST_MAC, 0x0800,
                 ipv4(GUEST_IP, PEER_IP, 17, struct.pack(">HHHH", 5, 7, 8 + len(payload), field) + payload))


@settings(max_examples=200)
@given(st.binary(max_size=2000), st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 40))
def test_a_completed_checksum_always_verifies(payload, v6, field, padding):
    frame = bytearray(tcp_frame(payload, v6, field) + bytes(padding))    # padding: short frames are padded
    assert complete_checksum(frame)
    assert checksum_ok(frame) is True
    frame2 = bytearray(frame)
    assert complete_checksum(frame2) and frame2 == frame                  # idempotent


@given(st.binary(max_size=1500), st.integers(0, 0xFFFF))
def test_a_completed_udp_checksum_is_never_zero(payload, field):
    frame = bytearray(udp_frame(payload, field))
    assert complete_checksum(frame)
    assert frame[40:42] != b"\0\0" and checksum_ok(frame) is True


@given(st.binary(max_size=200))
def test_frames_whose_checksum_cannot_be_set_up(junk):
    arp = bytearray(ether(PEER_MAC, GUEST_MAC, 0x0806, junk))
    assert not complete_checksum(arp)
    frag = bytearray(ether(PEER_MAC, GUEST_MAC, 0x0800, ipv4(GUEST_IP, PEER_IP, 17, bytes(16))))
    frag[20] |= 0x20                                                     # more fragments
    assert not complete_checksum(frag)
    short = bytearray(ether(PEER_MAC, GUEST_MAC, 0x0800, ipv4(GUEST_IP, PEER_IP, 6, bytes(10))))
    assert not complete_checksum(short)                                  # shorter than a TCP header


@settings(max_examples=100)
@given(st.binary(min_size=1, max_size=20000), st.integers(1, 9000), st.booleans(), st.integers(0, 2 ** 32 - 1))
def test_software_gso_gives_back_the_payload_in_valid_segments(payload, mss, v6, seq):
    frame = tcp_frame(payload, v6, 0, flags=0x19, seq=seq)
    segs = segment_tcp(frame, mss)
    assert segs is not None
    hdr = 74 if v6 else 54
    assert b"".join(s[hdr:] for s in segs) == payload
    assert all(0 < len(s) - hdr <= mss for s in segs)
    assert len(segs) == -(-len(payload) // mss)
    for i, s in enumerate(segs):
        assert checksum_ok(s) is True
        tcp = s[hdr - 20:hdr]
        assert struct.unpack(">I", tcp[4:8])[0] == (seq + i * mss) & 0xFFFFFFFF
        assert tcp[13] & 0x09 == (0x09 if i == len(segs) - 1 else 0)
        if not v6:
            assert internet_checksum(s[14:34]) == 0
            assert struct.unpack(">H", s[16:18])[0] == len(s) - 14
        else:
            assert struct.unpack(">H", s[18:20])[0] == len(s) - 54


def test_gso_on_something_that_is_not_tcp():
    assert segment_tcp(udp_frame(b"x" * 3000, 0), 1400) is None
    assert segment_tcp(b"\0" * 10, 1400) is None
