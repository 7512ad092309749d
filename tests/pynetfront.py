"""A netfront played from Python (on tests/pyfront.py's PyGuest): the guest's side of the network split
driver, acting where the guest's own driver would -- its store nodes, its grant table, its event channels,
rings and buffers in its own RAM -- so a test can drive netback exactly, or break any rule on purpose.

    g = PyGuest(); add_vifs(g.dom, [VifSpec(net="socket:/tmp/x")])
    nf = PyNetfront(g); nf.connect()            # rings, grants, event channel, state Connected
    nf.send(frame)                              # one frame, split over slots as asked
    nf.post_rx(8); frames = nf.received()
"""
from __future__ import annotations

import struct
from typing import Optional

from miniguest.abi.netif import (NETTXF_extra_info, NETTXF_more_data, RX_REQUEST, RX_RESPONSE, TX_REQUEST,
                                 TX_RESPONSE, NETRXF_more_data)
from miniguest.abi.ring import SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD, ring_size

from pyfront import PyGuest

PAGE = 4096
TX_SIZE = ring_size(PAGE, 12)
RX_SIZE = ring_size(PAGE, 8)


class FrontRing:
    """FRONT_RING_INIT over one page of guest memory."""

    def __init__(self, page: memoryview, entry: int, size: int) -> None:
        self.page, self.entry, self.size = page, entry, size
        self.req_prod_pvt = 0
        self.rsp_cons = 0
        struct.pack_into("<IIII", page, 0, 0, 1, 0, 1)          # SHARED_RING_INIT

    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.page, off)[0]

    def set_u32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.page, off, v & 0xFFFFFFFF)

    def slot(self, idx: int) -> int:
        return 64 + (idx & (self.size - 1)) * self.entry

    def put_request(self, data: bytes) -> None:
        off = self.slot(self.req_prod_pvt)
        self.page[off:off + len(data)] = data
        self.req_prod_pvt = (self.req_prod_pvt + 1) & 0xFFFFFFFF

    def push_requests(self) -> bool:
        """RING_PUSH_REQUESTS_AND_CHECK_NOTIFY."""
        old = self.u32(SRING_REQ_PROD)
        new = self.req_prod_pvt
        self.set_u32(SRING_REQ_PROD, new)
        return ((new - self.u32(SRING_REQ_EVENT)) & 0xFFFFFFFF) < ((new - old) & 0xFFFFFFFF)

    def responses(self) -> list[bytes]:
        """Every new response (and rsp_event set for the next one, RING_FINAL_CHECK_FOR_RESPONSES)."""
        out = []
        while True:
            prod = self.u32(SRING_RSP_PROD)
            while self.rsp_cons != prod:
                off = self.slot(self.rsp_cons)
                out.append(bytes(self.page[off:off + self.entry]))
                self.rsp_cons = (self.rsp_cons + 1) & 0xFFFFFFFF
            self.set_u32(SRING_RSP_EVENT, self.rsp_cons + 1)
            if self.u32(SRING_RSP_PROD) == prod:
                return out


class PyNetfront:
    def __init__(self, guest: PyGuest, devid: int = 0, queues: int = 1, split: bool = False,
                 features: Optional[dict] = None) -> None:
        self.g = guest
        self.devid = devid
        self.node = f"device/vif/{devid}"
        self.nq = queues
        self.split = split
        self.features = {"request-rx-copy": 1, "feature-rx-notify": 1, "feature-sg": 1}
        self.features.update(features or {})
        self.q: list[dict] = []
        self.rx_pending: dict[int, list] = {}
        self.next_id = 0

    @property
    def backend(self) -> str:
        return self.g.read(f"{self.node}/backend")

    def backend_state(self) -> int:
        return int(self.g.dom.store.read(f"{self.backend}/state"))

    # -- set-up ---------------------------------------------------------------------------------------------
    def setup_queue(self) -> dict:
        g = self.g
        tx_mfn, rx_mfn = g.alloc_page(), g.alloc_page()
        q = {"tx": FrontRing(g.page(tx_mfn), 12, TX_SIZE), "rx": FrontRing(g.page(rx_mfn), 8, RX_SIZE),
             "tx_ref": g.grant(tx_mfn), "rx_ref": g.grant(rx_mfn),
             "tx_port": g.alloc_unbound(0), "rx_buffers": {}}
        q["rx_port"] = g.alloc_unbound(0) if self.split else q["tx_port"]
        return q

    def write_queue(self, q: dict, base: str) -> None:
        g = self.g
        g.write(f"{base}/tx-ring-ref", q["tx_ref"])
        g.write(f"{base}/rx-ring-ref", q["rx_ref"])
        if self.split:
            g.write(f"{base}/event-channel-tx", q["tx_port"])
            g.write(f"{base}/event-channel-rx", q["rx_port"])
        else:
            g.write(f"{base}/event-channel", q["tx_port"])

    def connect(self, state: int = 4) -> None:
        """What netfront's talk_to_netback writes, then our state (Connected)."""
        self.q = [self.setup_queue() for _ in range(self.nq)]
        if self.nq == 1:
            self.write_queue(self.q[0], self.node)
        else:
            self.g.write(f"{self.node}/multi-queue-num-queues", self.nq)
            for i, q in enumerate(self.q):
                self.write_queue(q, f"{self.node}/queue-{i}")
        for key, value in self.features.items():
            self.g.write(f"{self.node}/{key}", value)
        self.g.write(f"{self.node}/state", state)
        self.settle()

    # -- transmit --------------------------------------------------------------------------------------------
    def tx_buffer(self, data: bytes, offset: int = 0, readonly: bool = True) -> int:
        mfn = self.g.alloc_page()
        self.g.page(mfn)[offset:offset + len(data)] = data
        return self.g.grant(mfn, readonly=readonly)

    def new_id(self) -> int:
        self.next_id = (self.next_id + 1) & 0xFFFF
        return self.next_id

    def push_tx(self, q: int = 0) -> None:
        ring = self.q[q]["tx"]
        if ring.push_requests():
            self.g.notify(self.q[q]["tx_port"])
        self.settle()

    def settle(self) -> None:
        """Let dom0 do what the notifications asked (the backends' deferred work on the host loop), as a
        guest's vCPU gives the host loop its turn at the end of a run slice."""
        self.g.dom.host.loop.poll(0)

    def send(self, frame: bytes, flags: int = 0, pieces: Optional[list[int]] = None, extras: list[bytes] = (),
             q: int = 0, offset: int = 0, push: bool = True) -> list[int]:
        """Put one frame on the tx ring: split into `pieces` (sizes; default one slot), first request's size =
        the whole frame, NETTXF_more_data chaining; `extras` (8-byte netif_extra_info) after the first.
        Returns the request ids."""
        ring = self.q[q]["tx"]
        pieces = list(pieces or [len(frame)])
        ids = []
        pos = 0
        for i, n in enumerate(pieces):
            ref = self.tx_buffer(frame[pos:pos + n], offset if i == 0 else 0)
            f = (flags if i == 0 else 0) | (NETTXF_more_data if i < len(pieces) - 1 else 0)
            if i == 0 and extras:
                f |= NETTXF_extra_info
            rid = self.new_id()
            ids.append(rid)
            size = len(frame) if i == 0 else n
            ring.put_request(TX_REQUEST.pack(ref, offset if i == 0 else 0, f, rid, size))
            if i == 0:
                for e in extras:
                    ring.put_request(e.ljust(12, b"\0"))
            pos += n
        if push:
            self.push_tx(q)
        return ids

    def raw_tx(self, reqs: list[bytes], q: int = 0) -> None:
        """Requests exactly as given (12-byte slots), then push."""
        ring = self.q[q]["tx"]
        for r in reqs:
            ring.put_request(r.ljust(12, b"\0"))
        self.push_tx(q)

    def tx_responses(self, q: int = 0) -> list[tuple[int, int]]:
        return [TX_RESPONSE.unpack(r[:4]) for r in self.q[q]["tx"].responses()]

    # -- receive ---------------------------------------------------------------------------------------------
    def post_rx(self, n: int, q: int = 0, gref: Optional[int] = None) -> None:
        qq = self.q[q]
        ring = qq["rx"]
        for _ in range(n):
            rid = ring.req_prod_pvt & (RX_SIZE - 1)
            if gref is None:
                mfn = self.g.alloc_page()
                ref = self.g.grant(mfn)
                qq["rx_buffers"][rid] = (mfn, ref)
            else:
                ref = gref
            ring.put_request(RX_REQUEST.pack(rid, 0, ref))
        if ring.push_requests():
            self.g.notify(qq["rx_port"])
        self.settle()

    def rx_responses(self, q: int = 0) -> list[tuple[int, int, int, int]]:
        return [RX_RESPONSE.unpack(r) for r in self.q[q]["rx"].responses()]

    def received(self, q: int = 0) -> list[bytes]:
        """Frames delivered on queue q (their responses assembled; an error status ends a frame as b'')."""
        frames, cur = [], bytearray()
        for rid, off, flags, status in self.rx_responses(q):
            if status < 0:
                frames.append(b"")
                cur = bytearray()
                continue
            mfn, _ = self.q[q]["rx_buffers"][rid]
            cur += self.g.page(mfn)[off:off + status]
            if not flags & NETRXF_more_data:
                frames.append(bytes(cur))
                cur = bytearray()
        return frames
