"""The machine: what all domains on it share -- dom0's event channel end and the host I/O loop."""
from __future__ import annotations

from typing import TYPE_CHECKING

from miniguest.hypervisor.hostloop import HostLoop
from miniguest.hypervisor.common.event_channel import Dom0Evtchn

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain


class Host:
    def __init__(self, first_domid: int = 1) -> None:
        self.loop = HostLoop()
        self.dom0_evtchn = Dom0Evtchn()
        self.domains: dict[int, "Domain"] = {}
        self.services: dict[str, object] = {}       # dom0 daemons shared by all domains (xenstored)
        self._next_domid = first_domid     # a restored domain keeps its id

    def allocate_domid(self) -> int:
        domid = self._next_domid
        self._next_domid += 1
        return domid

    def add_domain(self, domain: "Domain") -> None:
        self.domains[domain.domid] = domain
        self.dom0_evtchn.domains[domain.domid] = domain

    def remove_domain(self, domain: "Domain") -> None:
        self.domains.pop(domain.domid, None)
        self.dom0_evtchn.domains.pop(domain.domid, None)

    def map_foreign(self, domid: int, mfn: int) -> memoryview:
        """dom0 mapping a guest frame (xenforeignmemory_map): a 4 KiB view of a frame the domain owns."""
        dom = self.domains.get(domid)
        if dom is None or not 0 <= mfn < dom.mem.nr_frames or dom.frames.owner[mfn] != domid:
            raise PermissionError(f"d{domid} does not own mfn {mfn:#x}")
        dom.foreign_mapped.add(mfn)          # dom0 holds it now: Xen would not free it under the mapping
        return dom.mem.frame(mfn)

    def close(self) -> None:
        self.loop.close()
