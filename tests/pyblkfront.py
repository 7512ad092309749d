"""A blkfront played from Python on a PyGuest (tests/pyfront.py): the guest side of blkif, by the rules by
default, and every rule breakable by a test (raw requests, indexes, grants, store nodes)."""
from __future__ import annotations

import struct
from typing import Optional

from miniguest.abi import blkif as B
from miniguest.abi.ring import SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD, ring_size
from miniguest.abi.xenbus import XenbusStateConnected, XenbusStateInitialised

from pyfront import PyGuest

SECTOR = 512


class PyBlkfront:
    def __init__(self, g: PyGuest, devid: int = 51712, order: Optional[int] = None, queues: int = 1,
                 persistent: bool = False, write_nodes: bool = True) -> None:
        self.g = g
        self.devid = devid
        self.fe = f"/local/domain/{g.domid}/device/vbd/{devid}"
        self.be = g.read(f"{self.fe}/backend")
        self.order = order
        pages = 1 << (order or 0)
        self.queues = []
        for q in range(queues):
            mfns = [g.alloc_page() for _ in range(pages)]
            refs = [g.grant(m) for m in mfns]
            port = g.alloc_unbound()
            for m in mfns[:1]:
                struct.pack_into("<IIII", g.page(m), 0, 0, 1, 0, 1)   # SHARED_RING_INIT
            self.queues.append({"mfns": mfns, "refs": refs, "port": port, "req_prod": 0, "rsp_cons": 0,
                                "size": ring_size(pages * 4096, B.ENTRY_SIZE)})
        self.persistent = persistent
        self.next_id = 1
        if write_nodes:
            self.write_nodes()

    def write_nodes(self, state: int = XenbusStateInitialised) -> None:
        g = self.g
        if self.order is not None:
            g.write(f"{self.fe}/ring-page-order", self.order)
        if len(self.queues) > 1:
            g.write(f"{self.fe}/multi-queue-num-queues", len(self.queues))
        for i, q in enumerate(self.queues):
            d = self.fe if len(self.queues) == 1 else f"{self.fe}/queue-{i}"
            if self.order is None:
                g.write(f"{d}/ring-ref", q["refs"][0])
            else:
                for j, ref in enumerate(q["refs"]):
                    g.write(f"{d}/ring-ref{j}", ref)
            g.write(f"{d}/event-channel", q["port"])
        g.write(f"{self.fe}/protocol", "x86_64-abi")
        g.write(f"{self.fe}/feature-persistent", int(self.persistent))
        g.write(f"{self.fe}/state", state)

    def backend(self, key: str) -> Optional[str]:
        return self.g.read(f"{self.be}/{key}")

    @property
    def connected(self) -> bool:
        return self.backend("state") == str(XenbusStateConnected)

    # -- the ring ---------------------------------------------------------------------------------------------
    def _ring_write(self, q: dict, off: int, data: bytes) -> None:
        while data:
            page, at = divmod(off, 4096)
            n = min(len(data), 4096 - at)
            self.g.page(q["mfns"][page])[at:at + n] = data[:n]
            off += n
            data = data[n:]

    def _ring_read(self, q: dict, off: int, n: int) -> bytes:
        out = b""
        while n:
            page, at = divmod(off, 4096)
            k = min(n, 4096 - at)
            out += bytes(self.g.page(q["mfns"][page])[at:at + k])
            off += k
            n -= k
        return out

    def _hdr(self, q: dict, off: int) -> int:
        return struct.unpack_from("<I", self.g.page(q["mfns"][0]), off)[0]

    def _set_hdr(self, q: dict, off: int, value: int) -> None:
        struct.pack_into("<I", self.g.page(q["mfns"][0]), off, value & 0xFFFFFFFF)

    def put_raw(self, raw: bytes, queue: int = 0) -> None:
        """Place a request in the next slot (no push)."""
        q = self.queues[queue]
        slot = 64 + (q["req_prod"] % q["size"]) * B.ENTRY_SIZE
        self._ring_write(q, slot, raw.ljust(B.REQUEST_SIZE, b"\0"))
        q["req_prod"] = (q["req_prod"] + 1) & 0xFFFFFFFF

    def push(self, queue: int = 0, prod: Optional[int] = None, notify: bool = True) -> None:
        q = self.queues[queue]
        self._set_hdr(q, SRING_REQ_PROD, q["req_prod"] if prod is None else prod)
        if notify:
            self.g.notify(q["port"])

    def responses(self, queue: int = 0) -> list[tuple[int, int, int]]:
        """(id, operation, status) of every new response; asks to be notified of the next."""
        q = self.queues[queue]
        out = []
        rp = self._hdr(q, SRING_RSP_PROD)
        while q["rsp_cons"] != rp:
            slot = 64 + (q["rsp_cons"] % q["size"]) * B.ENTRY_SIZE
            out.append(B.RESPONSE.unpack(self._ring_read(q, slot, B.RESPONSE_SIZE)))
            q["rsp_cons"] = (q["rsp_cons"] + 1) & 0xFFFFFFFF
        self._set_hdr(q, SRING_RSP_EVENT, q["rsp_cons"] + 1)
        return out

    def req_event(self, queue: int = 0) -> int:
        return self._hdr(self.queues[queue], SRING_REQ_EVENT)

    # -- requests -----------------------------------------------------------------------------------------------
    def rw(self, op: int, sector: int, segs: list[tuple[int, int, int]], rid: Optional[int] = None,
           queue: int = 0) -> int:
        """A read/write request with segments (gref, first_sect, last_sect); returns its id."""
        if rid is None:
            rid, self.next_id = self.next_id, self.next_id + 1
        raw = B.REQUEST.pack(op, len(segs), self.devid & 0xFFFF, rid, sector)
        raw += b"".join(B.SEGMENT.pack(*s) for s in segs)
        self.put_raw(raw, queue)
        return rid

    def indirect(self, op: int, sector: int, grefs: list[int], nseg: int, rid: Optional[int] = None,
                 queue: int = 0) -> int:
        if rid is None:
            rid, self.next_id = self.next_id, self.next_id + 1
        g8 = (grefs + [0] * 8)[:8]
        self.put_raw(B.REQUEST_INDIRECT.pack(B.BLKIF_OP_INDIRECT, op, nseg, rid, sector, self.devid & 0xFFFF,
                                             *g8), queue)
        return rid

    def simple(self, op: int, rid: Optional[int] = None, queue: int = 0) -> int:
        """flush / barrier without data."""
        if rid is None:
            rid, self.next_id = self.next_id, self.next_id + 1
        self.put_raw(B.REQUEST.pack(op, 0, self.devid & 0xFFFF, rid, 0), queue)
        return rid

    def discard(self, sector: int, nr: int, secure: bool = False, rid: Optional[int] = None) -> int:
        if rid is None:
            rid, self.next_id = self.next_id, self.next_id + 1
        self.put_raw(B.REQUEST_DISCARD.pack(B.BLKIF_OP_DISCARD, int(secure), self.devid & 0xFFFF, rid, sector, nr))
        return rid

    def buffer(self, data: Optional[bytes] = None, readonly: bool = False) -> tuple[int, int]:
        """A data page granted to dom0: (mfn, gref)."""
        mfn = self.g.alloc_page()
        if data is not None:
            self.g.page(mfn)[:len(data)] = data
        return mfn, self.g.grant(mfn, readonly=readonly)

    def read_sectors(self, sector: int, count: int) -> tuple[int, bytes]:
        """Read `count` (<= 8) sectors into one page: (status, data)."""
        mfn, ref = self.buffer()
        rid = self.rw(B.BLKIF_OP_READ, sector, [(ref, 0, count - 1)])
        self.push()
        (r,) = [x for x in self.responses() if x[0] == rid]
        return r[2], bytes(self.g.page(mfn)[:count * SECTOR])

    def write_sectors(self, sector: int, data: bytes) -> int:
        mfn, ref = self.buffer(data, readonly=not self.persistent)
        rid = self.rw(B.BLKIF_OP_WRITE, sector, [(ref, 0, len(data) // SECTOR - 1)])
        self.push()
        (r,) = [x for x in self.responses() if x[0] == rid]
        return r[2]
