#!/usr/bin/env python3
"""Benchmark netback: guest -> host throughput, against a ceiling measured in the same process.

    python3 tools/bench_net.py [--frames N] [--size BYTES] [--runs R] [--json]

Every row is measured by this process's CPU time (the guest's CPU and netback run here; the host end of the
wire is a child process that reads and discards, answering ARP for the gateway) and is the median of R runs:

  ceiling          the same frames, length-prefixed, written by this process into a Unix socket to the same
                   sink (what the bytes cost with no guest and no ring at all)
  python netfront  a frontend played from Python (tests/pynetfront.py) puts the frames on the tx ring,
                   netback grant-copies them out and writes them to the socket (netback's own cost, plus the
                   Python frontend's)
  minios           the minios sample (`net=bench`) sends the frames from inside the guest: netfront.c on
                   the emulated CPU, the event channel, netback, the socket (only its sending phase counts)

MB/s are payload+headers bytes per CPU second; "vs ceiling" is the row's rate over the ceiling's.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "net"))

GW_MAC = bytes.fromhex("525400000002")
GW_IP = bytes([10, 0, 2, 2])


def _sink(path: str, ready, result) -> None:
    """Listen on `path`, answer ARP for the gateway, count the bytes of everything else."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    ready.set()
    conn, _ = srv.accept()
    buf = b""
    frames = nbytes = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = struct.unpack_from(">I", buf, pos)
            if len(buf) - pos - 4 < n:
                break
            f = buf[pos + 4:pos + 4 + n]
            pos += 4 + n
            if f[12:14] == b"\x08\x06" and f[38:42] == GW_IP:
                reply = (f[6:12] + GW_MAC + b"\x08\x06\0\1\x08\0\x06\x04\0\2" + GW_MAC + GW_IP + f[22:32])
                reply = reply.ljust(60, b"\0")
                conn.sendall(struct.pack(">I", len(reply)) + reply)
            else:
                frames += 1
                nbytes += n
        buf = buf[pos:]
    result.put((frames, nbytes))


class Sink:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-net-")
        self.path = os.path.join(self.dir, "sink.sock")
        ready = mp.Event()
        self.result: "mp.Queue" = mp.Queue()
        self.proc = mp.Process(target=_sink, args=(self.path, ready, self.result), daemon=True)
        self.proc.start()
        if not ready.wait(10):
            raise SystemExit("the sink did not start")

    def finish(self) -> tuple[int, int]:
        frames, nbytes = self.result.get(timeout=60)
        self.proc.join(5)
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)
        return frames, nbytes


def frame_of(size: int) -> bytes:
    from netlib import udp_frame
    return udp_frame(bytes(i & 0xFF for i in range(size)))


def ceiling(frames: int, size: int) -> tuple[float, int]:
    sink = Sink()
    f = frame_of(size)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sink.path)
    rec = struct.pack(">I", len(f)) + f
    t0 = time.process_time()
    for _ in range(frames):
        s.sendall(rec)
    t1 = time.process_time()
    s.close()
    got, nbytes = sink.finish()
    assert got == frames
    return t1 - t0, nbytes


def python_netfront(frames: int, size: int) -> tuple[float, int]:
    sink = Sink()
    f = frame_of(size)
    import miniguest.toolstack.network as network
    from pyfront import PyGuest
    from pynetfront import PyNetfront
    g = PyGuest()
    network.add_vifs(g.dom, [network.VifSpec(net=f"socket:{sink.path}", mac="00:16:3e:00:00:01")])
    nf = PyNetfront(g)
    nf.connect()
    ref = nf.tx_buffer(f)
    from miniguest.abi.netif import TX_REQUEST
    ring = nf.q[0]["tx"]
    t0 = time.process_time()
    sent = 0
    while sent < frames:
        batch = min(64, frames - sent)
        for i in range(batch):
            ring.put_request(TX_REQUEST.pack(ref, 0, 0, i, len(f)))
        nf.push_tx()
        nf.tx_responses()
        sent += batch
        g.dom.host.loop.poll(0)
    while g.dom.host.services["xenbus-backend"].drivers["vif"].vifs[(g.dom.domid, 0)].link._out:
        g.dom.host.loop.poll(0.01)
    t1 = time.process_time()
    g.close()
    got, nbytes = sink.finish()
    assert got == frames, (got, frames)
    return t1 - t0, nbytes


def minios(frames: int, size: int) -> tuple[float, int]:
    from miniguest import Domain, samples
    from miniguest.toolstack.network import VifSpec
    sink = Sink()
    dom = Domain.from_elf(samples.path("minios"), cmdline=f"net=bench ip=10.0.2.15 gw=10.0.2.2 count={frames} "
                                                          f"size={size}",
                          vifs=[VifSpec(net=f"socket:{sink.path}", mac="00:16:3e:00:00:01")])
    dom.run(until=lambda d: "ARP for the gateway ok" in d.console.text)
    t0 = time.process_time()
    dom.run()
    t1 = time.process_time()
    text = dom.console.text
    dom.close()
    got, nbytes = sink.finish()
    if got != frames or "net bench:" not in text:
        raise SystemExit(f"minios bench failed: {got} frames arrived\n{text[-2000:]}")
    return t1 - t0, nbytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3000, help="frames per run")
    parser.add_argument("--size", type=int, default=1472, help="UDP payload bytes per frame (1472: 1514-byte "
                                                                "frames)")
    parser.add_argument("--runs", type=int, default=3, help="runs per row (the median is reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    rows = {"ceiling (Python socket)": ceiling, "python netfront -> netback": python_netfront,
            "minios -> netback": minios}
    results = {}
    for name, fn in rows.items():
        runs = [fn(args.frames, args.size) for _ in range(args.runs)]
        cpu = statistics.median(r[0] for r in runs)
        nbytes = runs[0][1]
        results[name] = {"cpu_s": cpu, "bytes": nbytes, "mb_per_s": nbytes / cpu / 1e6,
                         "frames_per_s": args.frames / cpu}
    base = results["ceiling (Python socket)"]["mb_per_s"]
    for r in results.values():
        r["vs_ceiling"] = r["mb_per_s"] / base
    if args.json:
        print(json.dumps({"frames": args.frames, "size": args.size, "runs": args.runs, "results": results},
                         indent=2))
        return 0
    print(f"{args.frames} frames of {len(frame_of(args.size))} bytes, median of {args.runs} runs, CPU time")
    print(f"{'measurement':30} {'MB/s':>9} {'frames/s':>10} {'vs ceiling':>11}")
    for name, r in results.items():
        print(f"{name:30} {r['mb_per_s']:9.1f} {r['frames_per_s']:10.0f} {r['vs_ceiling']:11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
