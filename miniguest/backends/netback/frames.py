"""Ethernet frames as netback needs to look into them: completing an offloaded checksum, choosing a queue.

A frontend that sends a frame with NETTXF_csum_blank leaves its TCP or UDP checksum for the backend (Linux's
netback marks the skb CHECKSUM_PARTIAL and the host stack or the NIC fills it in). Our host sides are plain
byte streams, so the checksum is completed here, from scratch over the pseudo-header and the segment, for
IPv4 and IPv6 (with the usual extension headers). A frame whose checksum cannot be set up (not TCP/UDP, a
fragment, truncated headers) is dropped, as skb_checksum_setup makes Linux's netback drop it.
"""
from __future__ import annotations

import struct
import zlib
from typing import Optional

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_CSUM_OFFSET = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}
_MIN_L4 = {IPPROTO_TCP: 20, IPPROTO_UDP: 8}
_IPV6_EXT = (0, 43, 60)             # hop-by-hop, routing, destination options: skipped; anything else ends


def ones_sum(data) -> int:
    """The 16-bit ones' complement sum of `data` (big-endian words, an odd byte padded), folded."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = int.from_bytes(data, "big")
    if not total:
        return 0
    r = total % 0xFFFF                # 2**16 == 1 (mod 0xFFFF): the folded sum, with 0xFFFF for 0
    return r or 0xFFFF


def internet_checksum(data, initial: int = 0) -> int:
    s = ones_sum(data) + initial
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _l3(frame) -> tuple[int, int]:
    """(ethertype, offset of the network header), past one 802.1Q tag."""
    if len(frame) < 14:
        return 0, 0
    ethertype = (frame[12] << 8) | frame[13]
    off = 14
    if ethertype == ETH_P_8021Q and len(frame) >= 18:
        ethertype = (frame[16] << 8) | frame[17]
        off = 18
    return ethertype, off


def _l4(frame) -> Optional[tuple[int, int, int, bytes]]:
    """(protocol, offset of the L4 header, L4 length, pseudo-header without the length and protocol word)
    for an unfragmented IPv4/IPv6 packet, else None."""
    ethertype, off = _l3(frame)
    if ethertype == ETH_P_IP:
        if len(frame) < off + 20:
            return None
        ihl = (frame[off] & 0xF) * 4
        tot_len = (frame[off + 2] << 8) | frame[off + 3]
        frag = ((frame[off + 6] << 8) | frame[off + 7]) & 0x3FFF      # MF and the fragment offset
        if frame[off] >> 4 != 4 or ihl < 20 or frag or tot_len < ihl or off + tot_len > len(frame):
            return None
        return frame[off + 9], off + ihl, tot_len - ihl, bytes(frame[off + 12:off + 20])
    if ethertype == ETH_P_IPV6:
        if len(frame) < off + 40 or frame[off] >> 4 != 6:
            return None
        payload = (frame[off + 4] << 8) | frame[off + 5]
        end = off + 40 + payload
        if end > len(frame):
            return None
        nh, pos = frame[off + 6], off + 40
        while nh in _IPV6_EXT:
            if pos + 8 > end:
                return None
            nh, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
        if pos > end:
            return None
        return nh, pos, end - pos, bytes(frame[off + 8:off + 40])
    return None


def complete_checksum(frame: bytearray) -> bool:
    """Fill in the TCP/UDP checksum of a frame sent with NETTXF_csum_blank. False: it cannot be set up
    (the frame is to be dropped)."""
    info = _l4(frame)
    if info is None or info[0] not in _CSUM_OFFSET:
        return False
    proto, l4, l4len, pseudo = info
    if l4len < _MIN_L4[proto]:
        return False
    field = l4 + _CSUM_OFFSET[proto]
    frame[field:field + 2] = b"\0\0"
    initial = ones_sum(pseudo) + proto + l4len
    csum = internet_checksum(frame[l4:l4 + l4len], initial)
    if proto == IPPROTO_UDP and csum == 0:
        csum = 0xFFFF                 # UDP: 0 means "no checksum"
    struct.pack_into(">H", frame, field, csum)
    return True


def checksum_ok(frame) -> Optional[bool]:
    """Whether a TCP/UDP frame's checksum verifies (None: not a TCP/UDP frame we can check)."""
    info = _l4(frame)
    if info is None or info[0] not in _CSUM_OFFSET:
        return None
    proto, l4, l4len, pseudo = info
    if l4len < _MIN_L4[proto]:
        return None
    if proto == IPPROTO_UDP and frame[l4 + 6:l4 + 8] == b"\0\0" and len(pseudo) == 8:
        return True                   # IPv4 UDP without a checksum
    return internet_checksum(frame[l4:l4 + l4len], ones_sum(pseudo) + proto + l4len) == 0


def flow_hash(frame) -> int:
    """A hash of the frame's flow (addresses and ports), to keep a flow on one receive queue."""
    info = _l4(frame)
    if info is None:
        return 0
    proto, l4, l4len, pseudo = info
    ports = bytes(frame[l4:l4 + 4]) if proto in _CSUM_OFFSET and l4len >= 4 else b""
    return zlib.crc32(pseudo + bytes([proto]) + ports)


def is_multicast(frame) -> bool:
    """Group (multicast or broadcast) destination address."""
    return len(frame) >= 6 and bool(frame[0] & 1)


def describe(frame) -> str:
    """A short human description of a frame for log lines."""
    if len(frame) < 14:
        return f"{len(frame)}-byte runt"
    ethertype, _ = _l3(frame)
    return f"{len(frame)} bytes, type {ethertype:#06x}"


def segment_tcp(frame, mss: int) -> Optional[list[bytes]]:
    """Software GSO: cut a large TCP frame (IPv4 or IPv6, sent with a GSO extra) into frames of at most
    `mss` bytes of payload each, with their lengths, IPv4 ids and checksums, sequence numbers and flags
    (FIN/PSH on the last segment only, CWR on the first only) set as a NIC's TSO would. None: not TCP."""
    info = _l4(frame)
    if info is None or info[0] != IPPROTO_TCP or mss <= 0:
        return None
    _, l4, l4len, _ = info
    if l4len < 20:
        return None
    doff = (frame[l4 + 12] >> 4) * 4
    if doff < 20 or doff > l4len:
        return None
    ethertype, l3 = _l3(frame)
    head = bytes(frame[:l4 + doff])
    payload = bytes(frame[l4 + doff:l4 + l4len])
    if not payload:
        payload = b""
    seq = struct.unpack_from(">I", frame, l4 + 4)[0]
    tcp_flags = frame[l4 + 13]
    out = []
    chunks = [payload[i:i + mss] for i in range(0, len(payload), mss)] or [b""]
    ipid = struct.unpack_from(">H", frame, l3 + 4)[0] if ethertype == ETH_P_IP else 0
    for i, chunk in enumerate(chunks):
        seg = bytearray(head + chunk)
        last = i == len(chunks) - 1
        f = tcp_flags
        if not last:
            f &= ~0x09                      # FIN, PSH
        if i:
            f &= ~0x80                      # CWR
        seg[l4 + 13] = f
        struct.pack_into(">I", seg, l4 + 4, (seq + i * mss) & 0xFFFFFFFF)
        if ethertype == ETH_P_IP:
            ihl = (seg[l3] & 0xF) * 4
            struct.pack_into(">HH", seg, l3 + 2, ihl + doff + len(chunk), (ipid + i) & 0xFFFF)
            seg[l3 + 10:l3 + 12] = b"\0\0"
            struct.pack_into(">H", seg, l3 + 10, internet_checksum(seg[l3:l3 + ihl]))
        else:
            struct.pack_into(">H", seg, l3 + 4, (l4 - l3 - 40) + doff + len(chunk))
        complete_checksum(seg)
        out.append(bytes(seg))
    return out
