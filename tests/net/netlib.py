"""Helpers for netback tests: a guest driven from Python (pynetfront) with its vif on a Unix socket whose
other end the test holds (the "wire"), and frame builders."""
from __future__ import annotations

import os
import socket
import struct
import time
from typing import Optional

from miniguest.backends.netback.frames import internet_checksum, ones_sum
from miniguest.toolstack.network import VifSpec, add_vifs

from pyfront import PyGuest
from pynetfront import PyNetfront

GUEST_MAC = bytes.fromhex("00163e000001")
PEER_MAC = bytes.fromhex("525400000002")
GUEST_IP = bytes([10, 0, 2, 15])
PEER_IP = bytes([10, 0, 2, 2])


class Wire:
    """The host end of a `--net socket:` vif: QEMU's length-prefixed frames."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.conn: Optional[socket.socket] = None
        self.buf = b""

    def accept(self) -> None:
        self.listener.settimeout(5)
        self.conn, _ = self.listener.accept()
        self.conn.setblocking(False)

    def send(self, frame: bytes) -> None:
        assert self.conn is not None
        self.conn.setblocking(True)
        self.conn.sendall(struct.pack(">I", len(frame)) + frame)
        self.conn.setblocking(False)

    def send_raw(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.setblocking(True)
        self.conn.sendall(data)
        self.conn.setblocking(False)

    def frames(self, wait: float = 0.0) -> list[bytes]:
        """Every complete frame that has arrived (waiting up to `wait` s for the first one)."""
        assert self.conn is not None
        deadline = time.monotonic() + wait
        out: list[bytes] = []
        while True:
            try:
                data = self.conn.recv(1 << 20)
                if not data:
                    break
                self.buf += data
            except BlockingIOError:
                pass
            while len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) < 4 + n:
                    break
                out.append(self.buf[4:4 + n])
                self.buf = self.buf[4 + n:]
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(0.005)
        return out

    def close(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class NetGuest:
    """A PyGuest with vif 0 on a Wire, and its Python netfront."""

    def __init__(self, tmpdir: str, connect: bool = True, spec: Optional[dict] = None, **front) -> None:
        self.wire = Wire(os.path.join(tmpdir, "wire.sock"))
        self.g = PyGuest()
        self.dom = self.g.dom
        options = {"mac": "00:16:3e:00:00:01"}
        options.update(spec or {})
        add_vifs(self.dom, [VifSpec(net=f"socket:{self.wire.path}", **options)])
        self.wire.accept()
        self.nf = PyNetfront(self.g, **front)
        if connect:
            self.nf.connect()

    @property
    def driver(self):
        return self.dom.host.services["xenbus-backend"].drivers["vif"]

    @property
    def vif(self):
        return self.driver.vifs[(self.dom.domid, 0)]

    def pump(self, seconds: float = 0.05) -> None:
        """Let the host loop deliver what the wire sent."""
        deadline = time.monotonic() + seconds
        while True:
            self.dom.host.loop.poll(0.005)
            if time.monotonic() >= deadline:
                return

    def backend(self, key: str) -> Optional[str]:
        try:
            return self.dom.store.read(f"/local/domain/0/backend/vif/{self.dom.domid}/0/{key}").decode()
        except Exception:
            return None

    def error(self) -> Optional[str]:
        try:
            return self.dom.store.read(f"/local/domain/0/error/backend/vif/{self.dom.domid}/0/error").decode()
        except Exception:
            return None

    def close(self) -> None:
        self.g.close()
        self.wire.close()


# -- frames ---------------------------------------------------------------------------------------------------
def ether(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack(">H", ethertype) + payload


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 1) -> bytes:
    hdr = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0, src,
                                dst))
    struct.pack_into(">H", hdr, 10, internet_checksum(bytes(hdr)))
    return bytes(hdr) + payload


def udp(src: bytes, dst: bytes, sport: int, dport: int, data: bytes, csum: str = "full") -> bytes:
    """A UDP datagram: csum "full" (correct), "partial" (the pseudo-header sum a csum_blank sender leaves),
    "zero" (none)."""
    seg = bytearray(struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data)
    pseudo = ones_sum(src + dst) + 17 + len(seg)
    if csum == "full":
        c = internet_checksum(bytes(seg), pseudo) or 0xFFFF
    elif csum == "partial":
        s = pseudo
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        c = s
    else:
        c = 0
    struct.pack_into(">H", seg, 6, c)
    return bytes(seg)


def udp_frame(data: bytes, csum: str = "full", sport: int = 40000, dport: int = 7777,
              src: bytes = GUEST_IP, dst: bytes = PEER_IP, smac: bytes = GUEST_MAC, dmac: bytes = PEER_MAC) -> bytes:
    return ether(dmac, smac, 0x0800, ipv4(src, dst, 17, udp(src, dst, sport, dport, data, csum)))


def udp_checksum_ok(frame: bytes) -> bool:
    ip = frame[14:34]
    seg = frame[34:34 + struct.unpack(">H", ip[2:4])[0] - 20]
    return internet_checksum(seg, ones_sum(ip[12:20]) + 17 + len(seg)) == 0


class Gateway:
    """A gateway played in Python at the far end of a `--net socket:` vif (it listens on `path`): answers
    ARP for 10.0.2.2 and echoes every UDP datagram sent to it, from a thread. `checksums` records whether
    each datagram's UDP checksum verified as it arrived."""

    def __init__(self, path: str) -> None:
        import threading
        self.wire = Wire(path)
        self.checksums: list[bool] = []
        self.frames = 0
        self.bytes = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.wire.listener.settimeout(60)
            conn, _ = self.wire.listener.accept()
        except OSError:
            self.done.set()
            return
        buf = b""
        conn.settimeout(120)
        try:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                buf += data
                while len(buf) >= 4:
                    (n,) = struct.unpack(">I", buf[:4])
                    if len(buf) < 4 + n:
                        break
                    frame, buf = buf[4:4 + n], buf[4 + n:]
                    self.frames += 1
                    self.bytes += n
                    reply = self.answer(frame)
                    if reply is not None:
                        conn.sendall(struct.pack(">I", len(reply)) + reply)
        except OSError:
            pass
        finally:
            conn.close()
            self.done.set()

    def answer(self, f: bytes) -> Optional[bytes]:
        if f[12:14] == b"\x08\x06" and f[20:22] == b"\0\1" and f[38:42] == PEER_IP:
            return (f[6:12] + PEER_MAC + b"\x08\x06\0\1\x08\0\x06\x04\0\2" + PEER_MAC + PEER_IP
                    + f[22:32]).ljust(60, b"\0")
        if f[12:14] == b"\x08\x00" and f[23] == 17 and f[30:34] == PEER_IP:
            ihl = (f[14] & 15) * 4
            udp_seg = f[14 + ihl:]
            ulen = struct.unpack(">H", udp_seg[4:6])[0]
            self.checksums.append(udp_checksum_ok(f))
            sport, dport = struct.unpack(">HH", udp_seg[:4])
            data = udp_seg[8:ulen]
            return udp_frame(data, sport=dport, dport=sport, src=f[30:34], dst=f[26:30], smac=PEER_MAC,
                             dmac=f[6:12])
        return None

    def close(self) -> None:
        self.wire.close()
        self.thread.join(timeout=5)
