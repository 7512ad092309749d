"""The GDB remote serial protocol's framing: packets, checksums, escapes, acknowledgments, Ctrl-C.

    $<payload>#<2 hex digits: sum of the payload bytes mod 256>

In ack mode each side answers a packet with `+` (or `-`: send it again); after QStartNoAckMode neither
does. A lone 0x03 byte outside a packet is an interrupt request. `}` escapes the next byte (XOR 0x20) in
binary payloads (X packets, qXfer replies); we escape `$ # } *` in everything we send, since gdb reads `*`
in a reply as run-length encoding.

The reader never trusts its input: junk between packets is skipped, an oversized or unterminated packet is
dropped, and a bad checksum is reported as such, so a hostile or broken client costs at most a bounded
buffer. A small client (`RspClient`) for tests and tools/bench_gdb.py lives here too.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Optional, Union

PACKET_SIZE = 0x4000            # what we advertise (qSupported PacketSize): the largest packet we accept
MAX_FRAME = 2 * PACKET_SIZE + 4  # an escaped packet may double in size; beyond this it is dropped
INTERRUPT = 0x03
_ESCAPE_RE = re.compile(rb"[$#}*]")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class ProtocolError(ValueError):
    """Malformed packet contents (bad hex, missing fields): answered with an error reply."""


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(payload: bytes) -> bytes:
    return _ESCAPE_RE.sub(lambda m: bytes((0x7D, m.group()[0] ^ 0x20)), payload)


def unescape(payload: bytes) -> bytes:
    if 0x7D not in payload:
        return payload
    out = bytearray()
    it = iter(payload)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise ProtocolError("escape character at the end of a packet")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def frame(payload: Union[bytes, str]) -> bytes:
    """One packet on the wire."""
    if isinstance(payload, str):
        payload = payload.encode("latin-1")
    body = escape(payload)
    return b"$" + body + b"#" + b"%02x" % checksum(body)


def hex_to_bytes(text: Union[bytes, str]) -> bytes:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if len(text) % 2:
        raise ProtocolError("odd number of hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ProtocolError("not hex") from None


def parse_hex(text: Union[bytes, str]) -> int:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if not text or len(text) > 16 or text.strip() != text:
        raise ProtocolError(f"bad number {text!r}")
    try:
        return int(text, 16)
    except ValueError:
        raise ProtocolError(f"bad number {text!r}") from None


@dataclass
class Event:
    """What the reader found: kind is "packet" (payload set), "interrupt", "ack", "nak" or "bad"."""
    kind: str
    payload: bytes = b""
    why: str = ""


class PacketReader:
    """Incremental parser: feed bytes as they arrive, get complete events back."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        buf = self._buf
        while buf:
            c = buf[0]
            if c == ord("$"):
                end = buf.find(b"#")
                restart = buf.find(b"$", 1, end if end >= 0 else len(buf))
                if restart > 0:
                    # `$` never appears inside a packet (it travels escaped): this one was cut short.
                    events.append(Event("bad", why="truncated packet"))
                    del buf[:restart]
                    continue
                if end < 0 or end + 3 > len(buf):
                    if len(buf) > MAX_FRAME:
                        events.append(Event("bad", why="packet too long"))
                        del buf[:1]
                        nxt = buf.find(b"$")
                        del buf[:nxt if nxt >= 0 else len(buf)]
                        continue
                    break                       # wait for the rest
                body = bytes(buf[1:end])
                cs = bytes(buf[end + 1:end + 3])
                if not all(ch in _HEX for ch in cs):
                    events.append(Event("bad", why="bad checksum"))
                    del buf[:end + 1]               # what follows `#` may be the next packet
                    continue
                del buf[:end + 3]
                if len(body) > MAX_FRAME:
                    events.append(Event("bad", why="packet too long"))
                    continue
                ok = int(cs, 16) == checksum(body)
                if not ok:
                    events.append(Event("bad", why="bad checksum"))
                    continue
                try:
                    events.append(Event("packet", unescape(body)))
                except ProtocolError as e:
                    events.append(Event("bad", why=str(e)))
            elif c == INTERRUPT:
                del buf[:1]
                events.append(Event("interrupt"))
            elif c == ord("+"):
                del buf[:1]
                events.append(Event("ack"))
            elif c == ord("-"):
                del buf[:1]
                events.append(Event("nak"))
            else:
                nxt = min((i for i in (buf.find(b"$"), buf.find(b"\x03"), buf.find(b"+"), buf.find(b"-"))
                           if i >= 0), default=len(buf))
                del buf[:max(nxt, 1)]           # junk between packets
        return events


class RspClient:
    """A minimal gdb-side client: for tests and benchmarks, not for users (they have gdb)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)     # as gdb does
        self.reader = PacketReader()
        self.ack = True
        self.console: list[bytes] = []          # O packets seen
        self._queue: list[Event] = []

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: Union[bytes, str]) -> None:
        self.sock.sendall(frame(payload))

    def _events(self) -> list[Event]:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the stub closed the connection")
        return self.reader.feed(data)

    def recv(self) -> bytes:
        """The next packet that is not console output (O packets are collected in `console`)."""
        while True:
            while not self._queue:
                self._queue.extend(self._events())
            ev = self._queue.pop(0)
            if ev.kind != "packet":
                continue
            if self.ack:
                self.sock.sendall(b"+")
            if ev.payload.startswith(b"O") and ev.payload != b"OK" and _is_hex(ev.payload[1:]):
                self.console.append(bytes.fromhex(ev.payload[1:].decode()))
                continue
            return ev.payload

    def request(self, payload: Union[bytes, str]) -> bytes:
        self.send(payload)
        return self.recv()

    def start_no_ack(self) -> bytes:
        reply = self.request("QStartNoAckMode")
        if reply == b"OK":
            self.ack = False
        return reply

    def interrupt(self) -> None:
        self.sock.sendall(bytes((INTERRUPT,)))

    def read_memory(self, addr: int, length: int) -> Optional[bytes]:
        reply = self.request(f"m{addr:x},{length:x}")
        return None if reply.startswith(b"E") else bytes.fromhex(reply.decode())


def _is_hex(data: bytes) -> bool:
    return len(data) % 2 == 0 and all(c in b"0123456789abcdefABCDEF" for c in data)
