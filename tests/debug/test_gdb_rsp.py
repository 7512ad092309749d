"""The remote protocol's framing (debug/rsp.py) and the target description gdb validates (debug/tdesc.py)."""
from __future__ import annotations

import xml.dom.minidom

import pytest

from miniguest.debug import tdesc
from miniguest.debug.rsp import (MAX_FRAME, PacketReader, ProtocolError, checksum, escape, frame, hex_to_bytes,
                                 parse_hex, unescape)


def kinds(events):
    return [(e.kind, e.payload) for e in events]


def test_frame_and_checksum():
    assert frame("OK") == b"$OK#9a"
    assert checksum(b"qSupported") == int(frame("qSupported")[-2:], 16)


def test_escape_round_trip_covers_every_byte():
    data = bytes(range(256))
    assert unescape(escape(data)) == data
    assert b"*" not in escape(b"a*b") and b"#" not in escape(b"#") and b"$" not in escape(b"$")


def test_reader_splits_packets_acks_and_interrupts():
    r = PacketReader()
    assert kinds(r.feed(b"+$g#67\x03-")) == [("ack", b""), ("packet", b"g"), ("interrupt", b""), ("nak", b"")]


def test_reader_waits_for_a_packet_cut_anywhere():
    wire = frame(b"m400000,10")
    r = PacketReader()
    for i in range(len(wire) - 1):
        assert r.feed(wire[i:i + 1]) == []
    assert kinds(r.feed(wire[-1:])) == [("packet", b"m400000,10")]


def test_reader_reports_bad_checksums_and_skips_junk():
    r = PacketReader()
    evs = r.feed(b"junk\x01\x02$g#00 more junk $?#3f")
    assert kinds(evs) == [("bad", b""), ("packet", b"?")]
    assert evs[0].why == "bad checksum"
    assert kinds(r.feed(b"$g#zz")) == [("bad", b"")]


def test_reader_drops_an_unterminated_flood_with_bounded_memory():
    r = PacketReader()
    evs = r.feed(b"$" + b"A" * (MAX_FRAME + 10))
    assert [e.why for e in evs] == ["packet too long"]
    assert len(r._buf) <= MAX_FRAME
    assert kinds(r.feed(b"$?#3f")) == [("packet", b"?")]


def test_reader_unescapes_binary_payloads():
    wire = frame(b"X400000,3:}#*")
    assert b"}#*" not in wire
    assert kinds(PacketReader().feed(wire)) == [("packet", b"X400000,3:}#*")]


def test_hex_helpers_reject_malformed_input():
    assert hex_to_bytes("00ff") == b"\x00\xff"
    for bad in ("abc", "zz", "0x"):
        with pytest.raises(ProtocolError):
            hex_to_bytes(bad)
    assert parse_hex("ffffffff80000000") == 0xFFFFFFFF80000000
    for bad in ("", "g", "1" * 17, " 1"):
        with pytest.raises(ProtocolError):
            parse_hex(bad)


def test_target_description_has_what_gdb_requires_for_amd64():
    doc = xml.dom.minidom.parseString(tdesc.TARGET_XML)
    features = {f.getAttribute("name"): [r.getAttribute("name") for r in f.getElementsByTagName("reg")]
                for f in doc.getElementsByTagName("feature")}
    core = features["org.gnu.gdb.i386.core"]
    assert core[:18] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [f"r{i}" for i in range(8, 16)] \
        + ["rip", "eflags"]
    assert core[18:24] == ["cs", "ss", "ds", "es", "fs", "gs"]
    assert core[24:] == [f"st{i}" for i in range(8)] + ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg",
                                                        "fooff", "fop"]
    assert features["org.gnu.gdb.i386.sse"] == [f"xmm{i}" for i in range(16)] + ["mxcsr"]
    assert features["org.gnu.gdb.i386.segments"] == ["fs_base", "gs_base"]
    assert doc.getElementsByTagName("architecture")[0].firstChild.data == "i386:x86-64"
    assert tdesc.G_PACKET_SIZE == 16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 2 * 8
