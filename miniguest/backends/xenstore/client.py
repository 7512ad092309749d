"""`miniguest store`: a small xenstore client speaking the wire protocol over the daemon's Unix socket.

    python -m miniguest.backends.xenstore.client --socket PATH ls [PATH]
                                                           read PATH...
                                                           write PATH VALUE [PATH VALUE...]
                                                           mkdir PATH...
                                                           rm PATH...
                                                           watch PATH [--count N]

The socket defaults to $XENSTORED_PATH, the variable Xen's own tools read. Exit status 0 on success, 1 with
one line on stderr when the daemon answers an error (e.g. "ENOENT"), 2 for usage errors.
"""
from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
from collections import deque
from typing import Optional, Sequence

from miniguest.abi import xs_wire as W

from .errors import XenstoreError

_HDR = struct.Struct("<IIII")


class SocketClient:
    """A blocking client for one Unix-socket connection (replies are matched by req_id)."""

    def __init__(self, path: str, timeout: Optional[float] = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._buf = bytearray()
        self._req_id = 0
        self.events: deque[tuple[str, str]] = deque()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SocketClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_msg(self) -> tuple[int, int, int, bytes]:
        while True:
            if len(self._buf) >= _HDR.size:
                t, r, x, n = _HDR.unpack_from(self._buf)
                if len(self._buf) >= _HDR.size + n:
                    body = bytes(self._buf[_HDR.size:_HDR.size + n])
                    del self._buf[:_HDR.size + n]
                    return t, r, x, body
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("xenstored closed the connection")
            self._buf += data

    def request(self, msg_type: int, payload: bytes, tx_id: int = 0) -> bytes:
        self._req_id = (self._req_id + 1) & 0xFFFFFFFF
        req_id = self._req_id
        self.sock.sendall(_HDR.pack(msg_type, req_id, tx_id, len(payload)) + payload)
        while True:
            t, r, _x, body = self._recv_msg()
            if t == W.XS_WATCH_EVENT:
                parts = body.split(b"\0")
                self.events.append((parts[0].decode("ascii", "replace"),
                                    parts[1].decode("utf-8", "replace") if len(parts) > 1 else ""))
                continue
            if r != req_id:
                continue
            if t == W.XS_ERROR:
                raise XenstoreError(body.rstrip(b"\0").decode("ascii", "replace"))
            return body

    def next_event(self) -> tuple[str, str]:
        while not self.events:
            t, _r, _x, body = self._recv_msg()
            if t == W.XS_WATCH_EVENT:
                parts = body.split(b"\0")
                self.events.append((parts[0].decode("ascii", "replace"),
                                    parts[1].decode("utf-8", "replace") if len(parts) > 1 else ""))
        return self.events.popleft()

    # conveniences
    def read(self, path: str, tx_id: int = 0) -> bytes:
        return self.request(W.XS_READ, path.encode() + b"\0", tx_id)

    def write(self, path: str, value: bytes, tx_id: int = 0) -> None:
        self.request(W.XS_WRITE, path.encode() + b"\0" + value, tx_id)

    def directory(self, path: str, tx_id: int = 0) -> list[str]:
        body = self.request(W.XS_DIRECTORY, path.encode() + b"\0", tx_id)
        return [c.decode("ascii") for c in body.split(b"\0")[:-1]]


def _show(value: bytes) -> str:
    """Printable form of a value (xenstore-ls style escapes for non-printable bytes)."""
    out = []
    for b in value:
        if b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def _ls(client: SocketClient, path: str, indent: int, out: list[str]) -> None:
    for child in client.directory(path):
        full = f"/{child}" if path == "/" else f"{path}/{child}"
        try:
            value = _show(client.read(full))
        except XenstoreError as err:
            value = f"<{err.name}>"
        out.append(f"{' ' * indent}{child} = \"{value}\"")
        _ls(client, full, indent + 1, out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="miniguest store", description="Talk to miniguest's xenstored.")
    parser.add_argument("--socket", default=os.environ.get("XENSTORED_PATH"),
                        help="daemon socket (default: $XENSTORED_PATH)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ls", help="list a subtree with values")
    p.add_argument("path", nargs="?", default="/")
    p = sub.add_parser("read", help="print values")
    p.add_argument("paths", nargs="+")
    p = sub.add_parser("write", help="write PATH VALUE pairs")
    p.add_argument("pairs", nargs="+")
    p = sub.add_parser("mkdir", help="create nodes")
    p.add_argument("paths", nargs="+")
    p = sub.add_parser("rm", help="remove subtrees")
    p.add_argument("paths", nargs="+")
    p = sub.add_parser("watch", help="print watch events")
    p.add_argument("path")
    p.add_argument("--count", type=int, default=0, help="exit after N events (0: until interrupted)")
    args = parser.parse_args(argv)
    if not args.socket:
        parser.error("no socket: pass --socket or set XENSTORED_PATH")
    if args.cmd == "write" and len(args.pairs) % 2:
        parser.error("write needs PATH VALUE pairs")
    try:
        with SocketClient(args.socket, args.timeout) as client:
            return _run(client, args)
    except XenstoreError as err:
        print(f"miniguest store: {err.name}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as err:
        print(f"miniguest store: {args.socket}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(client: SocketClient, args: argparse.Namespace) -> int:
    if args.cmd == "ls":
        lines: list[str] = []
        _ls(client, args.path, 0, lines)
        for line in lines:
            print(line)
    elif args.cmd == "read":
        for path in args.paths:
            print(_show(client.read(path)))
    elif args.cmd == "write":
        for path, value in zip(args.pairs[::2], args.pairs[1::2]):
            client.write(path, value.encode())
    elif args.cmd == "mkdir":
        for path in args.paths:
            client.request(W.XS_MKDIR, path.encode() + b"\0")
    elif args.cmd == "rm":
        for path in args.paths:
            client.request(W.XS_RM, path.encode() + b"\0")
    elif args.cmd == "watch":
        client.sock.settimeout(None if args.count == 0 else args.timeout)
        client.request(W.XS_WATCH, args.path.encode() + b"\0" + b"miniguest-store\0")
        seen = 0
        while args.count == 0 or seen < args.count:
            path, _token = client.next_event()
            print(path, flush=True)
            seen += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
