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
  linux (--linux)  Debian's Linux (fetched as tests/debian.py does) uploads the same number of bytes with
                   `wget --post-file` through its own xen-netfront (TCP, its own GSO/sg/checksum offload) and
                   passt to a sink on 127.0.0.1 -- all in a private network namespace (tests/netns.py), since
                   it starts passt. Only the upload counts (the boot takes about a minute per run); passt's
                   CPU is its own process's, not counted.

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


LINUX_SCRIPT = """#!/bin/sh
ip link set lo up
ip link set eth0 up
cat > /tmp/udhcpc.sh <<'EOS'
#!/bin/sh
[ "$1" = bound ] && ip addr add "$ip/$mask" dev "$interface" && ip route add default via "$router"
EOS
chmod +x /tmp/udhcpc.sh
udhcpc -i eth0 -s /tmp/udhcpc.sh -q -f -n -t 5 -T 3 >/dev/null 2>&1
yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde | head -c {nbytes} > /tmp/up
echo "bench: start"
wget -q -O /dev/null --post-file /tmp/up http://10.0.2.2:8080/upload
echo "bench: end"
poweroff -f
"""


def _tcp_sink(ready, result) -> None:
    """An HTTP server on 127.0.0.1:8080 that takes one POST and counts its body."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 8080))
    srv.listen(1)
    ready.set()
    conn, _ = srv.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
    n = len(body)
    while n < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        n += len(chunk)
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    conn.close()
    result.put(n)


def linux_inner(nbytes: int) -> tuple[float, int]:
    """Inside a private network namespace: Linux uploads `nbytes` with wget over passt to a local sink."""
    from debian import linux_packages
    from miniguest import Domain
    from miniguest.toolstack.initramfs import KernelModules, build, busybox_binary
    from miniguest.toolstack.network import VifSpec
    packages = linux_packages()
    initrd, _ = build(busybox_binary(packages.busybox_root), KernelModules.find(packages.root, packages.release),
                      ["xen-netfront"], script=LINUX_SCRIPT.format(nbytes=nbytes).encode())
    ready, result = mp.Event(), mp.Queue()
    proc = mp.Process(target=_tcp_sink, args=(ready, result), daemon=True)
    proc.start()
    ready.wait(10)
    out = bytearray()
    dom = Domain.from_elf(packages.vmlinuz, module=initrd, cmdline="console=hvc0 quiet", console_output=out.extend,
                          vifs=[VifSpec(net="user", mac="00:16:3e:00:00:01")])
    dom.run(until=lambda d: b"bench: start" in out)
    t0 = time.process_time()
    dom.run(until=lambda d: b"bench: end" in out)
    t1 = time.process_time()
    dom.run()
    dom.close()
    got = result.get(timeout=30)
    proc.join(5)
    return t1 - t0, got


def linux(frames: int, size: int) -> tuple[float, int]:
    """The Linux row, run in a private network namespace (tests/netns.py) since it starts passt."""
    from netns import NetNs
    nbytes = frames * size
    with NetNs() as ns:
        r = ns.run([sys.executable, __file__, "--linux-inner", str(nbytes)], capture_output=True, text=True,
                   timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"the Linux run failed:\n{r.stderr[-3000:]}")
    cpu, got = json.loads(r.stdout.strip().splitlines()[-1])
    return cpu, got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3000, help="frames per run")
    parser.add_argument("--size", type=int, default=1472, help="UDP payload bytes per frame (1472: 1514-byte "
                                                                "frames)")
    parser.add_argument("--runs", type=int, default=3, help="runs per row (the median is reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--linux", action="store_true", help="also Debian's Linux (downloads it; a minute a run)")
    parser.add_argument("--linux-inner", type=int, metavar="BYTES", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.linux_inner:
        print(json.dumps(linux_inner(args.linux_inner)))
        return 0
    rows = {"ceiling (Python socket)": ceiling, "python netfront -> netback": python_netfront,
            "minios -> netback": minios}
    if args.linux:
        rows["linux (wget POST over passt)"] = linux
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
