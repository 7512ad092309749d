#!/usr/bin/env python3
"""Benchmark miniguest's xenstored: socket and ring round trips per second.

    python3 tools/bench_xenstore.py [--ops N]

Socket: the daemon runs in a child process on its own HostLoop (as in a real run, where it shares a thread
with the guest, not with the client); requests come from this process through our client class and through a
hand-rolled raw socket. The baseline is a plain Unix-socket echo server of the same shape (a selector loop in
a child process), so the ratio shows what the xenstore protocol and store cost on top of the bare transport.
Ring: a Python guest side on a 4096-byte page calls on_event() directly (what the hypervisor does on notify).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import selectors
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miniguest.abi import xs_wire as W  # noqa: E402
from miniguest.backends.xenstore.client import SocketClient  # noqa: E402
from miniguest.backends.xenstore.daemon import XenstoreDaemon, populate_domain  # noqa: E402
from miniguest.backends.xenstore.guestring import GuestRing  # noqa: E402
from miniguest.hypervisor.hostloop import HostLoop  # noqa: E402

HDR = struct.Struct("<IIII")


def _serve_xenstore(path: str, ready: "mp.synchronize.Event") -> None:
    d = XenstoreDaemon()
    d.dom0.write("/bench/value", "x" * 64)
    loop = HostLoop()
    d.listen_unix(path, loop)
    ready.set()
    while True:
        loop.poll(None)


def _serve_echo(path: str, ready: "mp.synchronize.Event") -> None:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    sel = selectors.DefaultSelector()
    ready.set()
    conn, _ = srv.accept()
    sel.register(conn, selectors.EVENT_READ)
    while True:
        sel.select()
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def _start(target, path: str) -> mp.Process:
    ready = mp.Event()
    proc = mp.Process(target=target, args=(path, ready), daemon=True)
    proc.start()
    if not ready.wait(10):
        raise SystemExit("server did not start")
    return proc


def _rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def _raw_roundtrips(sock: socket.socket, msg: bytes, n: int) -> None:
    for _ in range(n):
        sock.sendall(msg)
        hdr = b""
        while len(hdr) < 16:
            hdr += sock.recv(16 - len(hdr))
        left = HDR.unpack(hdr)[3]
        while left:
            left -= len(sock.recv(left))


def bench_socket(ops: int) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="xsbench")
    results: dict[str, float] = {}
    echo_path = os.path.join(tmp, "echo")
    proc = _start(_serve_echo, echo_path)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(echo_path)
        msg = HDR.pack(W.XS_READ, 1, 0, 12) + b"/bench/value\0"[:12]
        results["echo baseline (raw socket)"] = _rate(ops, lambda n: _raw_roundtrips(s, msg, n))
    proc.terminate()

    xs_path = os.path.join(tmp, "socket")
    proc = _start(_serve_xenstore, xs_path)
    try:
        with SocketClient(xs_path) as c:
            results["READ  via SocketClient"] = _rate(ops, lambda n: [c.read("/bench/value") for _ in range(n)])
            results["WRITE via SocketClient"] = _rate(
                ops, lambda n: [c.write("/bench/w", b"%d" % i) for i in range(n)])
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(xs_path)
            msg = HDR.pack(W.XS_READ, 1, 0, 13) + b"/bench/value\0"
            results["READ  via raw socket"] = _rate(ops, lambda n: _raw_roundtrips(s, msg, n))
            wmsg = HDR.pack(W.XS_WRITE, 1, 0, 11) + b"/bench/w\0ab"
            results["WRITE via raw socket"] = _rate(ops, lambda n: _raw_roundtrips(s, wmsg, n))
    finally:
        proc.terminate()
    return results


def bench_ring(ops: int) -> dict[str, float]:
    d = XenstoreDaemon()
    populate_domain(d, 1, name="bench", uuid="00000000-0000-0000-0000-000000000001", memory_kib=65536,
                    store_port=1, store_mfn=1, console_port=2, console_mfn=2)
    g = GuestRing(start_index=0xFFFFFF00)
    conn = d.introduce_domain(1, g.page, g.notify)
    g.server_event = conn.on_event
    read = HDR.pack(W.XS_READ, 1, 0, 5) + b"name\0"
    write = HDR.pack(W.XS_WRITE, 1, 0, 9) + b"data/w\0ab"

    def loop(msg: bytes, n: int) -> None:
        for _ in range(n):
            g.push(msg)
            if not g.pull():
                raise SystemExit("no reply on the ring")

    return {"READ  ring round trip": _rate(ops, lambda n: loop(read, n)),
            "WRITE ring round trip": _rate(ops, lambda n: loop(write, n))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=5000, help="round trips per measurement")
    args = parser.parse_args()
    sock = bench_socket(args.ops)
    ring = bench_ring(args.ops)
    base = sock["echo baseline (raw socket)"]
    print(f"{'measurement':34} {'ops/s':>10} {'vs echo':>8}")
    for name, rate in list(sock.items()) + list(ring.items()):
        print(f"{name:34} {rate:10.0f} {rate / base:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
