"""A frontend played from Python: the guest's side of a split driver, for tests of backends.

The domain is real (built from a sample image, never run): the frontend acts exactly where the guest's own
driver would -- it talks to xenstored over the guest's store ring page (as the guest, with the guest's
permissions), fills grant entries in the guest's grant table frames, allocates and notifies event channels
through the guest's event channel table, and puts rings and data in the guest's own free RAM. Backends see
nothing different from a kernel doing the same; tests can also break every rule on purpose.
"""
from __future__ import annotations

import struct
from typing import Optional

from miniguest import Domain
from miniguest.abi import xs_wire as W
from miniguest.abi.xen import DOMID_SELF
from miniguest.backends.xenstore.guestring import GuestRing

from guestlib import HELLO

PAGE = 4096
GTF_permit_access = 1
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4


class PyGuest:
    """A built (not running) domain whose store, grants, events and memory a test drives as the guest."""

    def __init__(self, image: str = HELLO, memory_mib: int = 32, **options) -> None:
        self.dom = Domain.from_elf(image, memory_mib=memory_mib, **options)
        self.domid = self.dom.domid
        conn = self.dom.xenstored.domains[self.domid]
        page = self.dom.host.map_foreign(self.domid, self.dom.p2m[self.dom.layout.pfn(self.dom.layout.xenstore)])
        self.xs = GuestRing(page=page, start_index=0)  # type: ignore[arg-type]
        self.xs.server_event = conn.on_event
        self._next_pfn = self.dom.layout.pfn(self.dom.layout.stack) + 64   # free RAM past the boot stack
        self._next_ref = 8                                                   # 0-7: the toolstack's
        self.events: list[int] = []

    # -- the store, as the guest --------------------------------------------------------------------------
    def _req(self, t: int, payload: bytes) -> bytes:
        rt, body = self.xs.request(t, payload)
        if rt == W.XS_ERROR:
            raise RuntimeError(body.rstrip(b"\0").decode())
        return body

    def read(self, path: str) -> Optional[str]:
        try:
            return self._req(W.XS_READ, path.encode() + b"\0").decode()
        except RuntimeError:
            return None

    def write(self, path: str, value: object) -> None:
        self._req(W.XS_WRITE, path.encode() + b"\0" + str(value).encode())

    def rm(self, path: str) -> None:
        self._req(W.XS_RM, path.encode() + b"\0")

    def ls(self, path: str) -> list[str]:
        body = self._req(W.XS_DIRECTORY, path.encode() + b"\0")
        return [x.decode() for x in body.split(b"\0") if x]

    # -- memory ---------------------------------------------------------------------------------------------
    def alloc_page(self) -> int:
        """A free page of the guest's RAM: its machine frame (zeroed)."""
        pfn = self._next_pfn
        self._next_pfn += 1
        mfn = self.dom.p2m[pfn]
        self.dom.mem.clear_frame(mfn)
        return mfn

    def page(self, mfn: int) -> memoryview:
        return self.dom.mem.frame(mfn)

    # -- grants ---------------------------------------------------------------------------------------------
    def _entry_ma(self, ref: int) -> int:
        return (self.dom.grants.frames[ref // 512] << 12) + (ref % 512) * 8

    def grant(self, mfn: int, readonly: bool = False, domid: int = 0, ref: Optional[int] = None) -> int:
        """gnttab_grant_foreign_access: entry `ref` (next free by default) lets `domid` map frame `mfn`."""
        if ref is None:
            ref = self._next_ref
            self._next_ref += 1
        ma = self._entry_ma(ref)
        struct.pack_into("<HHI", self.dom.mem.mv, ma, 0, domid, mfn)
        struct.pack_into("<H", self.dom.mem.mv, ma, GTF_permit_access | (GTF_readonly if readonly else 0))
        return ref

    def grant_flags(self, ref: int) -> int:
        return struct.unpack_from("<H", self.dom.mem.mv, self._entry_ma(ref))[0]

    def end_access(self, ref: int) -> bool:
        """gnttab_end_foreign_access_ref: False while the backend still maps it (GTF_reading/writing)."""
        if self.grant_flags(ref) & (GTF_reading | GTF_writing):
            return False
        struct.pack_into("<H", self.dom.mem.mv, self._entry_ma(ref), 0)
        return True

    # -- event channels -------------------------------------------------------------------------------------
    def alloc_unbound(self, remote: int = 0) -> int:
        port = self.dom.events.alloc_unbound(DOMID_SELF, remote)
        self.events.append(port)
        return port

    def notify(self, port: int) -> None:
        """EVTCHNOP_send from the guest."""
        self.dom.events.send(port)

    def pending(self, port: int) -> bool:
        return self.dom.events.test_pending(port)

    def clear(self, port: int) -> None:
        off = 0x800 + (port // 64) * 8
        si = self.dom.shared_info_view()
        word = struct.unpack_from("<Q", si, off)[0] & ~(1 << (port % 64))
        struct.pack_into("<Q", si, off, word)

    def close(self) -> None:
        self.dom.close()
