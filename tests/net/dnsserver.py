"""A name server for the network tests, run inside the test's network namespace on 127.0.0.1:53 (what passt
offers the guest at the gateway address): `NAME=ADDRESS` arguments are its A records; any other name is
NXDOMAIN, other record types of known names an empty answer. Each query is logged on stdout.

    python3 dnsserver.py host.miniguest.test=10.0.2.2
"""
from __future__ import annotations

import socket
import struct
import sys


def qname(msg: bytes, pos: int) -> tuple[str, int]:
    labels = []
    while msg[pos]:
        n = msg[pos]
        labels.append(msg[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return ".".join(labels).lower(), pos + 1


def answer(msg: bytes, records: dict[str, bytes]) -> bytes:
    ident, flags, qd = struct.unpack(">HHH", msg[:6])
    name, end = qname(msg, 12)
    qtype, _ = struct.unpack(">HH", msg[end:end + 4])
    question = msg[12:end + 4]
    rcode, answers = 0, b""
    if name not in records:
        rcode = 3                                   # NXDOMAIN
    elif qtype == 1:
        answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + records[name]
    header = struct.pack(">HHHHHH", ident, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
    sys.stdout.write(f"query {name} type {qtype} -> {'answer' if answers else 'rcode %d' % rcode}\n")
    sys.stdout.flush()
    return header + question + answers


def main() -> None:
    records = {}
    for arg in sys.argv[1:]:
        name, _, addr = arg.partition("=")
        records[name.lower()] = socket.inet_aton(addr)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    while True:
        msg, peer = s.recvfrom(4096)
        try:
            s.sendto(answer(msg, records), peer)
        except (IndexError, struct.error, UnicodeError):
            pass


if __name__ == "__main__":
    main()
