"""blkback's xenbus side (Linux's drivers/block/xen-blkback/xenbus.c): probe, the image, connect, disconnect.

probe       advertises feature-max-indirect-segments, multi-queue-max-queues and max-ring-page-order, opens
            the image the hotplug step named (physical-device-path; watched until it appears) as `mode`
            says, and goes to InitWait.
connect     (frontend Initialised or Connected) reads the frontend's protocol, feature-persistent,
            multi-queue-num-queues, ring-page-order and, per queue, ring-ref/ring-ref<N> and event-channel;
            maps the rings, binds the event channels; writes feature-flush-cache, feature-barrier,
            feature-discard (+ discard-granularity/-alignment/-secure), feature-persistent, sectors, info,
            sector-size and physical-sector-size in one transaction; then Connected.
disconnect  unbinds, unmaps every ring and persistent grant; the image stays open for a reconnect.
remove      (the device's directory went: the toolstack detached it or destroyed the domain) also closes
            the image, which flushes what the guest wrote.
Anything the frontend got wrong in the store is xenbus_dev_fatal for this device, with Linux's wording.
"""
from __future__ import annotations

from typing import Optional

from miniguest.abi import blkif as B
from miniguest.abi import errno as E
from miniguest.backends.blkback.blkback import (MAX_INDIRECT_SEGMENTS, BlkRing, VbdState)
from miniguest.backends.blkback.image import DiskImage, ImageError
from miniguest.backends.ring import BackRing
from miniguest.backends.xenbus import XENBUS_MAX_RING_GRANT_ORDER, BackendDevice, SplitDriver

#: multi-queue-max-queues (Linux: the number of dom0 CPUs)
MAX_QUEUES = 4
DISCARD_GRANULARITY = 4096


class Blkback(SplitDriver):
    kind = "vbd"
    max_queues = MAX_QUEUES
    max_ring_page_order = XENBUS_MAX_RING_GRANT_ORDER

    # -- probe and the image (xen_blkbk_probe, backend_changed) -----------------------------------------------
    def advertise(self, dev: BackendDevice) -> None:
        vbd = VbdState()
        vbd.report = dev.log
        dev.data = vbd
        dev.write("feature-max-indirect-segments", MAX_INDIRECT_SEGMENTS)
        dev.write("multi-queue-max-queues", self.max_queues)
        dev.write("max-ring-page-order", self.max_ring_page_order)
        dev.watch("physical-device-path", lambda path: self._backend_changed(dev))

    def _backend_changed(self, dev: BackendDevice) -> None:
        vbd: VbdState = dev.data  # type: ignore[assignment]
        if vbd is None or vbd.image is not None:
            return
        path = dev.read("physical-device-path")
        if not path:
            return                               # the hotplug step has not run yet
        mode = dev.read("mode")
        if mode is None:
            dev.fatal(-E.ENOENT, "reading mode")
            return
        vbd.readonly = "w" not in mode
        vbd.cdrom = dev.read_otherend("device-type") == "cdrom"
        try:
            vbd.image = DiskImage(path, writable=not vbd.readonly)
        except ImageError as e:
            dev.fatal(-E.ENOENT, f"creating vbd structure: {e}")
            return
        if vbd.image.sectors == 0:
            vbd.image.close()
            vbd.image = None
            dev.fatal(-E.ENOENT, f"creating vbd structure: {path} holds no whole sector")
            return
        if vbd.connect_wanted:                   # the frontend was waiting for us
            vbd.connect_wanted = False
            self.otherend_changed(dev, dev.otherend_state())

    # -- connect_ring + connect ---------------------------------------------------------------------------
    def connect(self, dev: BackendDevice) -> bool:
        vbd: Optional[VbdState] = dev.data  # type: ignore[assignment]
        if vbd is None:
            return False
        if vbd.image is None:
            vbd.connect_wanted = True            # connect once the image is there (xen_update_blkif_status)
            return False
        protocol = dev.read_otherend("protocol")
        if protocol not in (None, "", "x86_64-abi"):
            dev.fatal(-E.ENOSYS, f"unknown fe protocol {protocol}" if protocol != "x86_32-abi"
                      else "fe protocol x86_32-abi is not supported (64-bit PV guests only)")
            return False
        vbd.persistent = bool(dev.read_otherend_uint("feature-persistent", 0))
        nr_queues = dev.read_otherend_uint("multi-queue-num-queues", 1)
        if nr_queues is None or not 1 <= nr_queues <= self.max_queues:
            dev.fatal(-E.ENOSYS, f"guest requested {nr_queues} queues, exceeding the maximum of "
                                 f"{self.max_queues}.")
            return False
        order = dev.read_otherend_uint("ring-page-order")
        if order is not None and order > self.max_ring_page_order:
            dev.fatal(-E.EINVAL, f"{dev.otherend}/request {order} ring page order exceed max:"
                                 f"{self.max_ring_page_order}")
            return False
        dirs = [dev.otherend] if nr_queues == 1 else [f"{dev.otherend}/queue-{i}" for i in range(nr_queues)]
        for i, d in enumerate(dirs):
            ring = self._connect_ring(dev, vbd, i, d, order)
            if ring is None:
                return False
            vbd.rings.append(ring)
        dev.info(f"using {nr_queues} queue{'s' if nr_queues > 1 else ''}, protocol x86_64-abi"
                f"{' persistent grants' if vbd.persistent else ''}")
        writable = not vbd.readonly
        info = (B.VDISK_READONLY if vbd.readonly else 0) | (B.VDISK_CDROM if vbd.cdrom else 0)
        details: dict[str, object] = {"feature-flush-cache": int(writable)}
        discard = writable and bool(dev.read_uint("discard-enable", 1))
        if discard:
            details.update({"discard-granularity": DISCARD_GRANULARITY, "discard-alignment": 0,
                            "discard-secure": 0})
        details.update({"feature-discard": int(discard), "feature-barrier": int(writable),
                        "feature-persistent": 1, "sectors": vbd.sectors, "info": info, "sector-size": 512,
                        "physical-sector-size": 512})
        dev.write_many(details)
        return True

    def _connect_ring(self, dev: BackendDevice, vbd: VbdState, index: int, d: str,
                      order: Optional[int]) -> Optional[BlkRing]:
        """read_per_ring_refs + xen_blkif_map for one queue."""
        port = dev.read_otherend_uint("event-channel", base=d)
        if port is None:
            dev.fatal(-E.EINVAL, f"reading {d}/event-channel")
            return None
        if order is None:
            ref = dev.read_otherend_uint("ring-ref", base=d)
            if ref is None:
                dev.fatal(-E.EINVAL, f"reading {d}/ring-ref")
                return None
            refs = [ref]
        else:
            refs = []
            for i in range(1 << order):
                ref = dev.read_otherend_uint(f"ring-ref{i}", base=d)
                if ref is None:
                    dev.fatal(-E.EINVAL, f"reading {d}/ring-ref{i}")
                    return None
                refs.append(ref)
        try:
            buf, mappings = dev.map_ring(refs)
        except Exception as e:
            dev.fatal(-E.EINVAL, f"mapping ring-ref port {port}: {e}")
            return None
        ring = BlkRing(dev, vbd, index, BackRing(buf, B.ENTRY_SIZE), mappings)
        try:
            ring.port = dev.bind_evtchn(port, ring.on_event)
        except Exception as e:
            ring.release()
            dev.fatal(-E.EINVAL, f"mapping ring-ref port {port}: {e}")
            return None
        return ring

    # -- disconnect, remove --------------------------------------------------------------------------------
    def disconnect(self, dev: BackendDevice) -> None:
        vbd: Optional[VbdState] = dev.data  # type: ignore[assignment]
        if vbd is None:
            return
        for ring in vbd.rings:
            ring.release()
        vbd.rings = []
        if vbd.image is not None and vbd.image.writable:
            try:
                vbd.image.flush()
            except OSError as e:
                vbd.report_io_error(e)

    def remove(self, dev: BackendDevice) -> None:
        self.disconnect(dev)
        vbd: Optional[VbdState] = dev.data  # type: ignore[assignment]
        if vbd is not None and vbd.image is not None:
            try:
                vbd.image.close()
            except OSError as e:
                vbd.report_io_error(e)
            vbd.image = None
