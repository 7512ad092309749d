"""Clients that send and never read: the daemon's memory stays bounded and everybody else is served.

The socket test runs a real guest in a separate `miniguest boot --store-socket` process and reads its resident
set from /proc/PID/status while a hostile client floods it; the others check the bounds on the daemon's queues
directly (socket watch events, rings of privileged and unprivileged domains).
"""
from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import time

import pytest
from xs_testlib import ROOT, make_guest

from miniguest.abi import xs_wire as W
from miniguest.backends.xenstore.daemon import XenstoreDaemon
from miniguest.backends.xenstore.quotas import Quotas

HDR = struct.Struct("<IIII")
SELFTEST = ROOT / "tests" / "guests" / "selftest.elf"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def request(path: str, msg_type: int, payload: bytes, req_id: int = 7) -> tuple[int, bytes]:
    """One request on a fresh connection (a well-behaved client), its reply."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(path)
        s.sendall(HDR.pack(msg_type, req_id, 0, len(payload)) + payload)
        head = b""
        while len(head) < 16:
            chunk = s.recv(16 - len(head))
            assert chunk, "daemon closed a well-behaved client"
            head += chunk
        t, r, _, n = HDR.unpack(head)
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
        assert r == req_id
        return t, body


@pytest.fixture
def booted(tmp_path):
    """A guest idling in a `miniguest boot` process that serves its store on a socket: (pid, socket path)."""
    path = str(tmp_path / "xs.sock")
    proc = subprocess.Popen([sys.executable, "-m", "miniguest.cli", "boot", str(SELFTEST), "-c", "hang",
                             "--quiet", "--store-socket", path], cwd=ROOT)
    try:
        for _ in range(600):                # until it listens (bind, chmod, listen)
            if proc.poll() is not None:
                break
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        assert proc.poll() is None
        # the guest is up and its store served once this answers
        assert request(path, W.XS_READ, b"/local/domain/1/name\0") == (W.XS_READ, b"selftest")
        yield proc.pid, path
    finally:
        proc.kill()
        proc.wait()


def test_request_flood_without_reading_keeps_rss_bounded(booted):
    """A socket client that pipelines requests and never reads a reply: the daemon stops reading it once its
    replies back up, so the process's RSS stays bounded while another client is served throughout; after
    the flooder disconnects, nothing it caused is left growing. (Before the fix: 48 MB -> 3 GB in 10 s.)"""
    pid, path = booted
    base = rss_kib(pid)
    bound = base + 48 * 1024
    payload = b"/local/domain/1/name\0"
    burst = (HDR.pack(W.XS_READ, 1, 0, len(payload)) + payload) * 4096
    target = 64 * 1024 * 1024          # 1.6 M requests: GBs of queued replies if they were all read
    flooder = socket.socket(socket.AF_UNIX)
    flooder.connect(path)
    flooder.setblocking(False)
    sent = pos = 0
    stuck = 0                           # consecutive probes during which the daemon read nothing of ours
    peak = base
    while sent < target and stuck < 20:
        try:
            n = flooder.send(burst[pos:])
        except BlockingIOError:
            n = 0
        sent += n
        pos = (pos + n) % len(burst)
        if n:
            stuck = 0
            continue
        # The kernel buffer is full: another client is served meanwhile, and the daemon stays bounded.
        assert request(path, W.XS_READ, b"/local/domain/1/name\0") == (W.XS_READ, b"selftest")
        peak = max(peak, rss_kib(pid))
        assert peak < bound, f"RSS {peak} KiB with {sent} bytes of requests sent (started at {base} KiB)"
        _, writable, _ = select.select([], [flooder], [], 0.05)
        stuck = 0 if writable else stuck + 1
    peak = max(peak, rss_kib(pid))
    assert peak < bound, f"RSS {peak} KiB with {sent} bytes of requests sent (started at {base} KiB)"
    assert sent < target, "the daemon kept reading a client that reads none of its replies"
    flooder.close()
    for _ in range(3):
        assert request(path, W.XS_READ, b"/local/domain/1/name\0") == (W.XS_READ, b"selftest")
    after = rss_kib(pid)
    for _ in range(20):
        request(path, W.XS_DIRECTORY, b"/local/domain/1\0")
    assert rss_kib(pid) <= max(after, peak) + 4 * 1024
    assert after < bound


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    return s


def test_socket_watch_events_to_a_client_that_does_not_read(served):
    """A dom0 socket client watching "/" that never reads: its queued events stay under the memory quota
    and it is disconnected (not left to lose events silently); writers and other clients go on."""
    d, path, lt = served
    lt.run(lambda: setattr(d.quotas, "memory", 256 * 1024))
    slow = _connect(path)
    token = b"t" * 2000
    slow.sendall(HDR.pack(W.XS_WATCH, 1, 0, 2 + len(token) + 1) + b"/\0" + token + b"\0")
    writer = _connect(path)
    # each write fires a ~2 KiB event at the slow client: 4000 writes would queue 8 MB
    for i in range(4000):
        value = f"/flood/n{i}\0x".encode()
        writer.sendall(HDR.pack(W.XS_WRITE, i, 0, len(value)) + value)
        t, r, _, n = HDR.unpack(writer.recv(16))
        assert (t, writer.recv(n)) == (W.XS_WRITE, b"OK\0")
        if i % 200 == 0:
            conns = lt.run(lambda: [c for c in d.connections if getattr(c, "sock", None) is not None])
            assert all(c.out_bytes <= 256 * 1024 for c in conns)
    assert lt.run(lambda: len([c for c in d.connections if getattr(c, "sock", None) is not None])) == 1
    slow.settimeout(10)
    received = 0
    while True:                     # what was in flight, then EOF: the daemon closed it
        chunk = slow.recv(1 << 16)
        if not chunk:
            break
        received += len(chunk)
    assert received < 4000 * 2000
    slow.close()
    writer.close()


def test_privileged_ring_that_does_not_consume_is_not_read():
    """Flow control on a dom0 ring too: requests stop being read at the privileged outstanding limit."""
    d = XenstoreDaemon(Quotas(outstanding_privileged=50))
    g = make_guest(d, 0, populate=False)
    payload = b"/local\0"
    msg = HDR.pack(W.XS_DIRECTORY, 1, 0, len(payload)) + payload
    for _ in range(200):
        if not g.push(msg * 10):
            break
    assert g.conn.outstanding == 50
    assert g.get(W.XS_REQ_PROD) != g.get(W.XS_REQ_CONS)
    got = []
    for _ in range(400):
        got += g.messages()
        g.server_event()
    assert g.get(W.XS_REQ_PROD) == g.get(W.XS_REQ_CONS) and len(got) > 50


def test_guest_ring_output_bytes_bound_reading():
    """An unprivileged guest whose queued output reached the memory quota (large replies, few requests) is
    not read from until it consumes."""
    d = XenstoreDaemon(Quotas(memory=16 * 1024, outstanding=1000))
    g = make_guest(d, 5)
    d.dom0.write("/local/domain/5/data/big", b"v" * 1900)
    g.messages()
    payload = b"data/big\0"
    data = (HDR.pack(W.XS_READ, 9, 0, len(payload)) + payload) * 100
    data = data[g.push(data):]
    assert g.conn.out_bytes <= 16 * 1024 + 1900 + 16
    assert g.conn.outstanding < 20
    assert g.get(W.XS_REQ_PROD) != g.get(W.XS_REQ_CONS)     # the rest waits in the request ring
    got = []
    for _ in range(400):
        got += g.messages()
        data = data[g.push(data):]
    assert len(got) == 100 and not data
