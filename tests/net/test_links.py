"""The host sides of a vif (backends/netback/links.py): QEMU's length-prefixed stream cut into frames however
the bytes arrive, a socket that connects or listens, a peer that misbehaves, passt that cannot start."""
from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniguest.backends.netback.links import (MAX_FRAME, LinkError, PasstLink, SocketLink, StreamLink,
                                              parse_link)
from miniguest.hypervisor.host import HostLoop


def pump(loop: HostLoop, until, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        loop.poll(0.01)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=12), st.lists(st.integers(1, 4000), max_size=30))
def test_frames_come_out_whole_however_the_stream_is_cut(frames, cuts):
    loop = HostLoop()
    a, b = socket.socketpair()
    try:
        link = StreamLink()
        got: list[bytes] = []
        link.on_frame = got.append
        link.loop = loop
        link.attach(a)
        stream = b"".join(struct.pack(">I", len(f)) + f for f in frames)
        pos = 0
        for n in cuts + [len(stream)]:
            b.sendall(stream[pos:pos + n])
            pos += n
            loop.poll(0)
        pump(loop, lambda: len(got) == len(frames))
        assert got == frames
    finally:
        link.close()
        b.close()
        loop.close()


def test_zero_length_records_are_skipped_and_a_huge_one_closes_the_link():
    loop = HostLoop()
    a, b = socket.socketpair()
    link = StreamLink()
    got, reports = [], []
    link.on_frame, link.report, link.loop = got.append, reports.append, loop
    link.attach(a)
    b.sendall(struct.pack(">I", 0) + struct.pack(">I", 3) + b"abc" + struct.pack(">I", MAX_FRAME + 1))
    pump(loop, lambda: not link.connected)
    assert got == [b"abc"] and not link.connected
    assert reports and "frame (more than" in reports[0]
    assert link.send(b"lost") and link.dropped_out == 1        # unplugged: frames are dropped, not queued
    b.close()
    loop.close()


def test_a_socket_link_listens_when_nothing_is_there_and_takes_the_next_peer(tmp_path):
    path = str(tmp_path / "seg.sock")
    loop = HostLoop()
    link = SocketLink(path)
    got: list[bytes] = []
    link.on_frame = got.append
    link.start(loop)
    assert os.path.exists(path) and not link.connected
    for round_ in range(2):                                        # a peer, then another after it left
        peer = socket.socket(socket.AF_UNIX)
        peer.connect(path)
        pump(loop, lambda: link.connected)
        peer.sendall(struct.pack(">I", 5) + b"hello")
        pump(loop, lambda: len(got) == round_ + 1)
        link.send(b"reply")
        link.flush()
        peer.settimeout(2)
        assert peer.recv(100) == struct.pack(">I", 5) + b"reply"
        peer.close()
        pump(loop, lambda: not link.connected)
    link.close()
    assert not os.path.exists(path)                               # the listener removes its socket
    loop.close()


def test_a_socket_link_connects_to_a_listener(tmp_path):
    path = str(tmp_path / "peer.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    loop = HostLoop()
    link = SocketLink(path)
    link.start(loop)
    conn, _ = srv.accept()
    assert link.connected
    link.send(b"x" * 100)
    link.flush()
    conn.settimeout(2)
    assert conn.recv(200) == struct.pack(">I", 100) + b"x" * 100
    link.close()
    assert os.path.exists(path)                                   # not ours to remove
    conn.close()
    srv.close()
    loop.close()


def test_a_socket_path_nobody_listens_on(tmp_path):
    path = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)                                                   # bound, never listening
    with pytest.raises(LinkError, match="cannot connect"):
        SocketLink(path).start(HostLoop())
    s.close()


def test_parse_link():
    assert isinstance(parse_link("user"), PasstLink)
    assert parse_link("socket:/x").path == "/x"
    with pytest.raises(LinkError, match="unknown network host side"):
        parse_link("tap:eth0")


def test_passt_that_is_not_installed(tmp_path):
    with pytest.raises(LinkError, match="needs passt"):
        PasstLink(program=str(tmp_path / "no-such-passt")).start(HostLoop())


def test_passt_that_exits_at_start(tmp_path):
    fake = tmp_path / "passt"
    fake.write_text("#!/bin/sh\necho 'No routable interface for IPv4' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(LinkError, match="passt exited at start: No routable interface"):
        PasstLink(program=str(fake)).start(HostLoop())
