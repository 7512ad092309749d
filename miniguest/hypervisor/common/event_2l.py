"""The 2-level event channel ABI (Xen: xen/common/event_2l.c): every domain's port ABI until it asks for
FIFO.

The pending and mask bitmaps are in the shared_info page and each vCPU has a selector word in its vcpu_info;
the guest writes all of them at will, so every operation reads them from guest memory at the moment it
needs them. Raising a port follows evtchn_2l_set_pending: set the pending bit; if it was clear (and a vCPU
polls the port, wake it) and the port is unmasked and the selector bit was clear, set the selector bit and
the vCPU's upcall_pending. The vCPU then takes an upcall at its next return to the guest, or wakes up if it
was blocked.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi.shared_info import SI_EVTCHN_MASK, SI_EVTCHN_PENDING, VI_PENDING_SEL

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.vcpu import Vcpu

_U64 = struct.Struct("<Q")
BITS_PER_WORD = 64
NR_WORDS = 64                   # 4096 ports: NR_EVENT_CHANNELS for a 64-bit guest


class Evtchn2L:
    """The port operations of the 2-level ABI (event_channel.PortOps) for one domain."""

    def __init__(self, domain: "Domain") -> None:
        self.domain = domain

    def _si(self) -> memoryview:
        return self.domain.shared_info_view()

    @staticmethod
    def _bit(base: int, port: int) -> tuple[int, int]:
        return base + (port // BITS_PER_WORD) * 8, 1 << (port % BITS_PER_WORD)

    def _test_and_set(self, off: int, m: int) -> bool:
        si = self._si()
        v = _U64.unpack_from(si, off)[0]
        if v & m:
            return True
        _U64.pack_into(si, off, v | m)
        return False

    def _test_and_clear(self, off: int, m: int) -> bool:
        si = self._si()
        v = _U64.unpack_from(si, off)[0]
        if not v & m:
            return False
        _U64.pack_into(si, off, v & ~m)
        return True

    def is_pending(self, port: int) -> bool:
        off, m = self._bit(SI_EVTCHN_PENDING, port)
        return bool(_U64.unpack_from(self._si(), off)[0] & m)

    def is_masked(self, port: int) -> bool:
        off, m = self._bit(SI_EVTCHN_MASK, port)
        return bool(_U64.unpack_from(self._si(), off)[0] & m)

    def set_pending(self, vcpu: "Vcpu", port: int) -> None:
        """evtchn_2l_set_pending."""
        off, m = self._bit(SI_EVTCHN_PENDING, port)
        if self._test_and_set(off, m):
            return
        vcpu.poll_wakeup(port)
        if self.is_masked(port):
            return
        self._mark_selector(vcpu, port)

    def unmask(self, vcpu: "Vcpu", port: int) -> None:
        """evtchn_2l_unmask: clear the mask; if the port is pending, re-raise the selector and the upcall."""
        off, m = self._bit(SI_EVTCHN_MASK, port)
        if self._test_and_clear(off, m) and self.is_pending(port):
            self._mark_selector(vcpu, port)

    def _mark_selector(self, vcpu: "Vcpu", port: int) -> None:
        vi = vcpu.vcpu_info_offset
        si = self._si() if vcpu.vcpu_info_view is None else vcpu.vcpu_info_view
        sel_off = vi + VI_PENDING_SEL
        sel = _U64.unpack_from(si, sel_off)[0]
        word = 1 << (port // BITS_PER_WORD)
        if sel & word:
            return
        _U64.pack_into(si, sel_off, sel | word)
        vcpu.mark_events_pending()

    def pending_unmasked(self) -> list[int]:
        si = self._si()
        ports = []
        for word in range(NR_WORDS):
            bits = (_U64.unpack_from(si, SI_EVTCHN_PENDING + 8 * word)[0]
                    & ~_U64.unpack_from(si, SI_EVTCHN_MASK + 8 * word)[0])
            while bits:
                low = bits & -bits
                ports.append(word * BITS_PER_WORD + low.bit_length() - 1)
                bits ^= low
        return ports
