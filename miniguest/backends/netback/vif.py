"""netback: the backend of one virtual network interface (vif), as Linux's drivers/net/xen-netback does it.

A `Vif` is connected to a frontend by the xenbus layer (netback/xenbus.py) with what the frontend wrote in
the store: per queue a tx and an rx ring (granted pages, mapped for as long as the queue is connected) and
one or two event channels, plus the frontend's features. It sees the guest only through those grants, grant
copies and dom0's ends of the event channels.

Transmit (guest -> host), per queue, on the guest's tx notification: requests are taken off the ring as
xenvif_tx_build_gops does -- a first request (size = the whole frame), extra-info slots (multicast filter
updates, GSO), the NETTXF_more_data chain of further fragments -- each fragment grant-copied out of the
guest's page, then every slot answered (NETIF_RSP_NULL for extras) and the frame passed to the host side.
The same rules as Linux decide what a hostile frontend gets:
  - a frame that is merely bad gets NETIF_RSP_ERROR on its slots and is dropped: a fragment larger than
    what remains of the frame, more than XEN_NETIF_NR_SLOTS_MIN fragments, a frame shorter than an Ethernet
    header, a grant that cannot be copied (that slot NETIF_RSP_ERROR, the others NETIF_RSP_OKAY);
  - a frontend that breaks the protocol has its vif disabled with one log line (xenvif_fatal_tx_err): ring
    indexes more than a ring ahead, a chain longer than the requests it has produced or than 20 slots, a
    fragment crossing its page, an extra-info slot missing or of an unknown type, a GSO extra of size 0 or
    an unknown GSO type. The other vifs and devices are not affected.
Receive (host -> guest): frames from the host side are queued per queue (bounded: past RX_QUEUE_BYTES the
host side stops being read), and copied (rx-copy: grant copy into the guest's granted buffers) when the
frontend has posted enough rx requests; each response sits in its request's slot. Without feature-sg a frame
must fit one page; frames larger than the MTU without scatter-gather are dropped.
Notifications follow io/ring.h's event indexes in both directions (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY,
RING_FINAL_CHECK_FOR_REQUESTS; req_event = prod + 1 while waiting for rx slots).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from miniguest.abi.netif import (ETH_FRAME_LEN, ETH_HLEN, EXTRA_GSO, EXTRA_MCAST, NETIF_RSP_ERROR,
                                 NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_more_data, NETTXF_csum_blank,
                                 NETTXF_extra_info, NETTXF_more_data, PAGE_SIZE, RX_REQUEST, RX_RESPONSE, RX_SLOT,
                                 TX_REQUEST, TX_RESPONSE, TX_SLOT, XEN_NETIF_EXTRA_FLAG_MORE,
                                 XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_MAX, XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
                                 XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_GSO_TYPE_TCPV4,
                                 XEN_NETIF_GSO_TYPE_TCPV6, XEN_NETIF_NR_SLOTS_MIN)
from miniguest.abi.ring import SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_PROD
from miniguest.backends.netback import frames as F
from miniguest.backends.netback.links import Link
from miniguest.backends.netback.pcap import PcapWriter
from miniguest.backends.ring import BackRing, PagedBuffer, RingOverflow
from miniguest.hypervisor.host import GrantCopySegment, GrantMapping, GrantRef, Host

FATAL_SKB_SLOTS = 20                 # Linux's fatal_skb_slots: a frame of more slots is an attack
MCAST_MAX = 64                       # XEN_NETBK_MCAST_MAX
RX_QUEUE_BYTES = 1 << 20             # queued toward the guest per queue before the host side is paused
MAX_QUEUES = 4                       # multi-queue-max-queues


class VifDisabled(Exception):
    """The frontend broke the protocol: the vif stops (xenvif_fatal_tx_err)."""


@dataclass
class VifFeatures:
    """What the frontend asked for (read_xenbus_vif_flags)."""
    rx_copy: bool = True
    rx_notify: bool = False
    sg: bool = False
    csum_offload: bool = True                   # not feature-no-csum-offload
    ipv6_csum_offload: bool = False
    gso_tcpv4: bool = False
    gso_tcpv6: bool = False
    multicast_control: bool = False


@dataclass
class QueueConfig:
    tx_ring_ref: int
    rx_ring_ref: int
    tx_evtchn: int
    rx_evtchn: int                              # == tx_evtchn without split event channels


@dataclass
class VifStats:
    tx_frames: int = 0                          # guest -> host
    tx_bytes: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0
    rx_frames: int = 0                          # host -> guest
    rx_bytes: int = 0
    rx_dropped: int = 0
    rx_errors: int = 0
    extra: dict = field(default_factory=dict)


class NetQueue:
    """One queue: a tx ring, an rx ring, their event channels (xenvif_queue)."""

    def __init__(self, vif: "Vif", index: int, cfg: QueueConfig) -> None:
        self.vif = vif
        self.index = index
        self.cfg = cfg
        self.maps: list[GrantMapping] = []
        self.ports: list[int] = []
        self.tx: Optional[BackRing] = None
        self.rx: Optional[BackRing] = None
        self.rx_queue: deque[bytes] = deque()
        self.rx_queue_bytes = 0
        self.tx_stalled = False                 # the host side is full: requests wait on the ring
        self._tx_scheduled = self._rx_scheduled = False

    # -- connection ------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """xenvif_connect_data: map both rings, check their indexes, bind the event channel(s). Raises
        GrantError/EvtchnError/VifDisabled; what was mapped or bound stays with the device (released by
        disconnect or by the xenbus layer)."""
        dev = self.vif.dev
        for ref in (self.cfg.tx_ring_ref, self.cfg.rx_ring_ref):
            self.maps.extend(dev.map_ring([ref])[1])
        tx_page, rx_page = (m.view for m in self.maps)
        assert tx_page is not None and rx_page is not None
        self.tx = _attach(BackRing(PagedBuffer([tx_page]), TX_SLOT), "tx")
        self.rx = _attach(BackRing(PagedBuffer([rx_page]), RX_SLOT), "rx")
        if self.cfg.tx_evtchn == self.cfg.rx_evtchn:
            self.ports.append(dev.bind_evtchn(self.cfg.tx_evtchn, self.on_event))
            self.tx_port = self.rx_port = self.ports[0]
        else:
            self.ports.append(dev.bind_evtchn(self.cfg.tx_evtchn, self.on_tx_event))
            self.ports.append(dev.bind_evtchn(self.cfg.rx_evtchn, self.on_rx_event))
            self.tx_port, self.rx_port = self.ports

    def disconnect(self) -> None:
        dev = self.vif.dev
        for port in self.ports:
            dev.unbind_evtchn(port)
        self.ports.clear()
        dev.unmap_ring(self.maps)
        self.maps.clear()
        self.tx = self.rx = None
        self.vif.rx_unqueue(self.rx_queue_bytes)
        self.rx_queue.clear()
        self.rx_queue_bytes = 0

    # -- events ----------------------------------------------------------------------------------------------
    # A notification from the guest schedules the work for the next poll of the host loop (the end of the
    # guest's run slice, or as soon as it goes idle) rather than doing it inside the guest's hypercall, as
    # netback's NAPI poll runs later on another CPU: a guest sending a stream queues many frames per pass,
    # and the ring's event indexes then spare most notifications both ways.
    def on_event(self) -> None:
        self.on_tx_event()
        self.on_rx_event()

    def on_tx_event(self) -> None:
        if not self._tx_scheduled:
            self._tx_scheduled = True
            self.vif.host.loop.call_later(self._run_tx)

    def on_rx_event(self) -> None:
        if not self._rx_scheduled:
            self._rx_scheduled = True
            self.vif.host.loop.call_later(self._run_rx)

    def _run_tx(self) -> None:
        self._tx_scheduled = False
        if self.tx is not None:
            self.vif.guarded(self.tx_action)

    def _run_rx(self) -> None:
        self._rx_scheduled = False
        if self.rx is not None:
            self.vif.guarded(self.rx_action)

    def notify(self, port: int) -> None:
        self.vif.dev.notify(port)

    # -- transmit: guest -> host -----------------------------------------------------------------------------
    def tx_action(self) -> None:
        ring = self.tx
        if ring is None or self.vif.disabled:
            return
        try:
            while True:
                while self._tx_one(ring):
                    pass
                self._push_tx(ring)
                if self.tx_stalled or not ring.final_check_for_requests():
                    return
        finally:
            self.vif.link.flush()

    def _tx_request(self, ring: BackRing, idx: int) -> tuple[int, int, int, int, int]:
        return TX_REQUEST.unpack(ring.read_request(idx, TX_REQUEST.size))

    def _tx_one(self, ring: BackRing) -> bool:
        """Take one frame (with its extras and fragments) off the ring. False: nothing (more) to do now."""
        vif = self.vif
        try:
            ring.request_prod()
        except RingOverflow as e:
            raise VifDisabled(f"impossible number of tx requests: {e}") from None
        work = ring.unconsumed_requests()
        if not work:
            return False
        if self.tx_stalled:
            return False
        cons = ring.req_cons
        gref, offset, flags, rid, size = self._tx_request(ring, cons)
        cons += 1
        work -= 1
        extras: dict[int, bytes] = {}
        nr_extras = 0
        if flags & NETTXF_extra_info:
            while True:
                if work <= 0:
                    raise VifDisabled("missing extra info")
                raw = ring.read_request(cons, 8)
                cons += 1
                work -= 1
                nr_extras += 1
                etype, eflags = raw[0], raw[1]
                if not 0 < etype < XEN_NETIF_EXTRA_TYPE_MAX:
                    raise VifDisabled(f"invalid extra type {etype}")
                extras[etype] = raw
                if not eflags & XEN_NETIF_EXTRA_FLAG_MORE:
                    break
        ring.req_cons = cons & 0xFFFFFFFF
        first = (gref, offset, flags, rid, size)
        if XEN_NETIF_EXTRA_TYPE_MCAST_ADD in extras:
            addr = EXTRA_MCAST.unpack(extras[XEN_NETIF_EXTRA_TYPE_MCAST_ADD])[2]
            ok = vif.mcast_add(addr)
            self._tx_response(ring, rid, NETIF_RSP_OKAY if ok else NETIF_RSP_ERROR, nr_extras)
            return True
        if XEN_NETIF_EXTRA_TYPE_MCAST_DEL in extras:
            vif.mcast_del(EXTRA_MCAST.unpack(extras[XEN_NETIF_EXTRA_TYPE_MCAST_DEL])[2])
            self._tx_response(ring, rid, NETIF_RSP_OKAY, nr_extras)
            return True

        # xenvif_count_requests: the fragments after the first request.
        frags: list[tuple[int, int, int, int, int]] = []
        remaining = size
        drop: Optional[str] = None
        more = flags & NETTXF_more_data
        while more:
            if len(frags) >= work:
                raise VifDisabled(f"asked for {len(frags) + 1} slots but only {work} requests are on the ring")
            if len(frags) >= FATAL_SKB_SLOTS:
                raise VifDisabled(f"a frame of more than {FATAL_SKB_SLOTS} fragments after its first slot")
            if drop is None and len(frags) >= XEN_NETIF_NR_SLOTS_MIN:
                drop = f"more than {XEN_NETIF_NR_SLOTS_MIN} fragments after the first slot"
            frag = self._tx_request(ring, ring.req_cons + len(frags))
            if drop is None and frag[4] > remaining:
                drop = f"a {frag[4]}-byte fragment with {remaining} bytes of the frame left"
            remaining = (remaining - frag[4]) & 0xFFFF
            if frag[1] + frag[4] > PAGE_SIZE:
                raise VifDisabled(f"a fragment crosses its page (offset {frag[1]}, size {frag[4]})")
            more = frag[2] & NETTXF_more_data
            frags.append(frag)
        ring.req_cons = (ring.req_cons + len(frags)) & 0xFFFFFFFF
        first_len = remaining                  # what the first slot holds: the frame less its fragments
        if drop is None and first_len < ETH_HLEN:
            drop = f"a frame whose first slot holds {first_len} bytes (less than an Ethernet header)"
        if drop is not None:
            self._tx_error(ring, first, nr_extras, frags, drop)
            return True
        if offset + first_len > PAGE_SIZE:
            raise VifDisabled(f"the first slot crosses its page (offset {offset}, size {first_len})")
        gso = extras.get(XEN_NETIF_EXTRA_TYPE_GSO)
        gso_size = 0
        if gso is not None:
            _, _, gso_size, gso_type, _, _ = EXTRA_GSO.unpack(gso)
            if not gso_size:
                raise VifDisabled("GSO size must not be zero")
            if gso_type not in (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6):
                raise VifDisabled(f"bad GSO type {gso_type}")

        # The data: one grant copy per slot, into the frame.
        frame = bytearray(size)
        segs = []
        pos = 0
        for g, off, _, _, n in [(gref, offset, flags, rid, first_len)] + frags:
            segs.append(GrantCopySegment(n, GrantRef(vif.domid, g, off), memoryview(frame)[pos:pos + n]))
            pos += n
        vif.host.grant_copy(segs)
        statuses = [NETIF_RSP_OKAY if s.status == 0 else NETIF_RSP_ERROR for s in segs]
        self._tx_response(ring, rid, statuses[0], nr_extras)
        for (_, _, _, fid, _), st in zip(frags, statuses[1:]):
            self._tx_response(ring, fid, st, 0)
        if NETIF_RSP_ERROR in statuses:
            bad = next(s for s in segs if s.status)
            vif.stats.tx_errors += 1
            vif.note(f"tx: grant {bad.source.ref} could not be copied (status {bad.status}); frame dropped")
            return True
        if flags & NETTXF_csum_blank and not F.complete_checksum(frame):
            vif.stats.tx_dropped += 1
            vif.note("tx: a frame with NETTXF_csum_blank whose checksum cannot be set up; dropped")
            return True
        if gso_size:
            segments = F.segment_tcp(frame, gso_size)
            if segments is None:
                vif.stats.tx_dropped += 1
                vif.note("tx: a GSO frame that is not TCP; dropped")
                return True
            for s in segments:
                self._to_host(s)
        else:
            self._to_host(bytes(frame))
        return True

    def _to_host(self, frame: bytes) -> None:
        if not self.vif.transmit(frame):
            self.tx_stalled = True

    def _tx_response(self, ring: BackRing, rid: int, status: int, nr_extras: int) -> None:
        """make_tx_response: the request's answer, then NETIF_RSP_NULL for each of its extra-info slots."""
        ring.put_response(TX_RESPONSE.pack(rid, status) + bytes(TX_SLOT - TX_RESPONSE.size))
        for _ in range(nr_extras):
            ring.put_response(TX_RESPONSE.pack(0, NETIF_RSP_NULL) + bytes(TX_SLOT - TX_RESPONSE.size))

    def _tx_error(self, ring: BackRing, first, nr_extras: int, frags, why: str) -> None:
        """xenvif_tx_err: NETIF_RSP_ERROR for every slot of the frame."""
        self.vif.stats.tx_errors += 1
        self.vif.note(f"tx: {why}; frame dropped")
        self._tx_response(ring, first[3], NETIF_RSP_ERROR, nr_extras)
        for frag in frags:
            self._tx_response(ring, frag[3], NETIF_RSP_ERROR, 0)

    def _push_tx(self, ring: BackRing) -> None:
        if ring.push_responses():
            self.notify(self.tx_port)

    def tx_resume(self) -> None:
        """The host side has room again."""
        if self.tx_stalled:
            self.tx_stalled = False
            self._run_tx()

    # -- receive: host -> guest ------------------------------------------------------------------------------
    def enqueue(self, frame: bytes) -> None:
        self.rx_queue.append(frame)
        self.rx_queue_bytes += len(frame)

    def rx_action(self) -> None:
        ring = self.rx
        if ring is None or self.vif.disabled or not self.rx_queue:
            return
        vif = self.vif
        try:
            prod = ring.request_prod()
        except RingOverflow as e:
            raise VifDisabled(f"impossible number of rx requests: {e}") from None
        done = 0
        while self.rx_queue:
            frame = self.rx_queue[0]
            needed = max(1, -(-len(frame) // PAGE_SIZE))
            avail = (prod - ring.req_cons) & 0xFFFFFFFF
            if avail < needed:
                ring.buf.set_u32(SRING_REQ_EVENT, prod + 1)     # tell us when the guest posts more
                newprod = ring.request_prod()
                if newprod == prod:
                    break
                prod = newprod
                continue
            self.rx_queue.popleft()
            self.rx_queue_bytes -= len(frame)
            vif.rx_unqueue(len(frame))
            self._rx_frame(ring, frame)
            done += 1
        if done and ring.push_responses():
            self.notify(self.rx_port)

    def _rx_frame(self, ring: BackRing, frame: bytes) -> None:
        """xenvif_rx_skb: one slot per page of the frame, each filled by a grant copy at offset 0."""
        vif = self.vif
        pos = 0
        first = True
        slots = []
        while pos < len(frame) or first:
            rid, _, gref = RX_REQUEST.unpack(ring.read_request(ring.req_cons, RX_REQUEST.size))
            n = min(PAGE_SIZE, len(frame) - pos)
            slots.append((rid, gref, pos, n))
            ring.req_cons = (ring.req_cons + 1) & 0xFFFFFFFF
            pos += n
            first = False
        segs = [GrantCopySegment(n, memoryview(frame)[at:at + n], GrantRef(vif.domid, gref, 0))
                for _, gref, at, n in slots]
        vif.host.grant_copy(segs)
        failed = False
        for i, ((rid, _, _, n), seg) in enumerate(zip(slots, segs)):
            fl = NETRXF_more_data if i < len(slots) - 1 else 0
            status = n if seg.status == 0 else NETIF_RSP_ERROR
            failed |= seg.status != 0
            ring.put_response(RX_RESPONSE.pack(rid, 0, fl, status))
        if failed:
            vif.stats.rx_errors += 1
            bad = next(s for s in segs if s.status)
            vif.note(f"rx: grant {bad.dest.ref} could not be copied to (status {bad.status})")
        else:
            vif.stats.rx_frames += 1
            vif.stats.rx_bytes += len(frame)


def _attach(ring: BackRing, what: str) -> BackRing:
    """BACK_RING_ATTACH at the ring's current rsp_prod (a reconnecting frontend keeps its indexes), refusing
    a ring whose requests are already more than a ring ahead (xenvif_map_frontend_data_rings: -EIO)."""
    rsp_prod = ring.buf.u32(SRING_RSP_PROD)
    req_prod = ring.buf.u32(SRING_REQ_PROD)
    ring.req_cons = ring.rsp_prod_pvt = rsp_prod
    if ((req_prod - rsp_prod) & 0xFFFFFFFF) > ring.size:
        raise VifDisabled(f"the {what} ring's req_prod {req_prod:#x} is more than a ring ahead of its rsp_prod "
                          f"{rsp_prod:#x}")
    return ring


class Vif:
    """One vif: its queues, its host side, its capture file. `dev` is the xenbus device (backends/xenbus.py's
    BackendDevice) through which the rings are mapped, the event channels bound and problems reported."""

    def __init__(self, host: Host, dev, link: Link, pcap: Optional[PcapWriter] = None) -> None:
        self.host = host
        self.dev = dev
        self.domid = dev.otherend_id
        self.devid = dev.devid
        self.mac = b"\0" * 6
        self.name = f"vif{self.domid}.{self.devid}"
        self.link = link
        self.pcap = pcap
        self.features = VifFeatures()
        self.queues: list[NetQueue] = []
        self.disabled: Optional[str] = None
        self.failed_queue: Optional[int] = None
        self.stats = VifStats()
        self.mcast: list[bytes] = []
        self.rx_bytes_queued = 0
        self.link_paused = False
        self._noted: set[str] = set()
        link.on_frame = self.receive
        link.on_writable = self._link_writable
        link.report = self.report

    # -- logging ------------------------------------------------------------------------------------------
    def report(self, message: str) -> None:
        """A line the user should see (dom0's log for the domain, and stderr)."""
        self.dev.log(message)

    def note(self, message: str) -> None:
        """A per-frame problem: reported once per kind (net_ratelimit)."""
        if message not in self._noted and len(self._noted) < 64:
            self._noted.add(message)
            self.report(message)

    def guarded(self, action: Callable[[], None]) -> None:
        """Run ring work; a protocol violation disables the vif (xenvif_fatal_tx_err)."""
        if self.disabled:
            return
        try:
            action()
        except VifDisabled as e:
            self.disable(str(e))

    def disable(self, why: str) -> None:
        if self.disabled:
            return
        self.disabled = why
        self.report(f"fatal error: {why}; disabling the device")
        for q in self.queues:
            q.rx_queue.clear()
            q.rx_queue_bytes = 0
        self.rx_bytes_queued = 0
        if self.link_paused:                    # keep reading the host side: its frames are dropped
            self.link_paused = False
            self.link.resume_reading()

    # -- connection (xenbus) -------------------------------------------------------------------------------
    def connect(self, features: VifFeatures, queues: list[QueueConfig], mac: bytes) -> None:
        """Map the rings and bind the event channels of every queue. A grant or event channel that cannot be
        used raises (GrantError, EvtchnError, VifDisabled) with nothing left connected."""
        self.disconnect()
        self.features = features
        self.mac = mac
        self.disabled = None
        self.failed_queue = None
        try:
            for i, cfg in enumerate(queues):
                self.failed_queue = i
                q = NetQueue(self, i, cfg)
                self.queues.append(q)
                q.connect()
            self.failed_queue = None
        except Exception:
            self.disconnect()
            raise
        self.link_paused = False
        self.link.resume_reading()
        for q in self.queues:                   # requests queued before we connected
            q.on_event()

    def disconnect(self) -> None:
        for q in self.queues:
            q.disconnect()
        self.queues.clear()
        self.mcast.clear()

    @property
    def connected(self) -> bool:
        return bool(self.queues)

    def close(self) -> None:
        self.disconnect()
        self.link.close()
        if self.pcap is not None:
            self.pcap.close()

    # -- guest -> host -------------------------------------------------------------------------------------
    def transmit(self, frame: bytes) -> bool:
        """A frame the guest sent. False: the host side is full now (it took this frame; no more until
        it says it is writable again)."""
        self.stats.tx_frames += 1
        self.stats.tx_bytes += len(frame)
        if self.pcap is not None:
            self.pcap.frame(frame)
        return self.link.send(frame)

    def _link_writable(self) -> None:
        for q in self.queues:
            q.tx_resume()

    # -- host -> guest -------------------------------------------------------------------------------------
    def receive(self, frame: bytes) -> None:
        """A frame from the host side for the guest."""
        if self.disabled or not self.queues:
            self.stats.rx_dropped += 1
            return
        if len(frame) > ETH_FRAME_LEN + 4 and not self.features.sg:
            self.stats.rx_dropped += 1          # does not fit one slot: the frontend cannot take it
            self.note(f"rx: a {len(frame)}-byte frame without feature-sg; dropped")
            return
        if (self.features.multicast_control and F.is_multicast(frame) and frame[:6] != b"\xff" * 6
                and bytes(frame[:6]) not in self.mcast):
            self.stats.rx_dropped += 1
            return
        if self.pcap is not None:
            self.pcap.frame(frame)
        q = self.queues[F.flow_hash(frame) % len(self.queues)] if len(self.queues) > 1 else self.queues[0]
        q.enqueue(frame)
        self.rx_bytes_queued += len(frame)
        if self.rx_bytes_queued > RX_QUEUE_BYTES and not self.link_paused:
            self.link_paused = True
            self.link.pause_reading()
        self.guarded(q.rx_action)

    def rx_unqueue(self, n: int) -> None:
        self.rx_bytes_queued -= n
        if self.link_paused and self.rx_bytes_queued <= RX_QUEUE_BYTES // 2:
            self.link_paused = False
            self.link.resume_reading()

    def poll(self) -> None:
        """Deliver what waits for rx slots (a frontend without feature-rx-notify never tells us it posted
        them: called when the guest goes idle)."""
        for q in self.queues:
            if q.rx_queue:
                self.guarded(q.rx_action)
            if q.tx is not None and not q.tx_stalled and q.tx.unconsumed_requests():
                self.guarded(q.tx_action)

    # -- multicast filter (XEN_NETIF_EXTRA_TYPE_MCAST_ADD/DEL) --------------------------------------------------
    def mcast_add(self, addr: bytes) -> bool:
        if len(self.mcast) >= MCAST_MAX:
            self.note("too many multicast addresses")
            return False
        self.mcast.append(bytes(addr))
        return True

    def mcast_del(self, addr: bytes) -> None:
        if bytes(addr) in self.mcast:
            self.mcast.remove(bytes(addr))

