"""What Xen itself keeps in a PV guest's address space: the L4 slots 256..271.

Two things live there for us, in machine frames owned by Xen:
- the read-only machine-to-phys table at MACH2PHYS_VIRT_START (slot 256), mapped as Xen maps it
  (xen/arch/x86/x86_64/mm.c, paging_init): the L4 entry and the one L3 entry are read-only and
  user-visible (__PAGE_HYPERVISOR_RO | _PAGE_USER), and each L2 entry maps 2 MiB of the table with a
  superpage (_PAGE_PSE | _PAGE_USER | _PAGE_PRESENT). So the only Xen page-table frames a guest can ever
  see -- through a linear (self-referencing) L4 entry of its own -- are the L3 and L2 of that read-only
  mapping, which Xen exposes the same way; there are no M2P L1 tables to read.
- a per-domain area (slot 260, Xen's PERDOMAIN_VIRT_START) holding the 64 KiB GDT (guest frames in pages
  0-13 once set_gdt is used, Xen's flat selectors in page 14), the stub that enters the guest at CPL3 with
  `iretq`, and its stack. These pages are supervisor-only (no _PAGE_USER at any level), so the guest --
  always at CPL3 -- faults on them even through a linear entry, while the CPU can read the GDT.
Every L4 the guest gets validated receives these slot entries (Xen's init_xen_l4_slots); the M2P slot
follows VMASST_TYPE_m2p_strict as Xen's fill_ro_mpt/zap_ro_mpt do.
"""
from __future__ import annotations

import struct
from array import array

from miniguest.abi.arch_x86 import (FIRST_RESERVED_GDT_PAGE, FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_DS32,
                                    MACH2PHYS_VIRT_START, XEN_CS32, XEN_CS64, XEN_DS64, _PAGE_ACCESSED,
                                    _PAGE_DIRTY, _PAGE_NX, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_USER)
from miniguest.hypervisor.ram import MachineMemory
from miniguest.hypervisor.save import StateError
from miniguest.hypervisor.x86.page_types import OWNER_XEN, FrameTable
from miniguest.hypervisor.unicorn_x86 import seg_descriptor

M2P_SLOT = 256
PERDOMAIN_SLOT = 260
PERDOMAIN_VIRT_START = 0xFFFF820000000000
GDT_VIRT_START = PERDOMAIN_VIRT_START
ENTRY_STUB_VA = PERDOMAIN_VIRT_START + 0x20000
HV_STACK_VA = PERDOMAIN_VIRT_START + 0x21000
# An address the CPU never executes, used as emu_start's `until` (inside the hole, unmapped).
NEVER_EXECUTED_VA = PERDOMAIN_VIRT_START + 0x7FF000
INVALID_M2P_ENTRY = (1 << 64) - 1
IRETQ = b"\x48\xcf"
SUPERPAGE_FRAMES = 512                # one L2 entry of the M2P maps 2 MiB: 512 frames, 2^18 M2P entries
M2P_ENTRIES_PER_SUPERPAGE = SUPERPAGE_FRAMES * 4096 // 8

_U64 = struct.Struct("<Q")
_BIG_ENDIAN = array("H", [1]).tobytes() != b"\x01\x00"
UPPER = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY
PAGE_HYPERVISOR_RO = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_NX       # Xen's __PAGE_HYPERVISOR_RO
M2P_DIR = PAGE_HYPERVISOR_RO | _PAGE_USER                            # slot 256 and the M2P L3 entry
M2P_SUPERPAGE = _PAGE_PSE | _PAGE_USER | _PAGE_PRESENT               # the M2P L2 entries
FIXED_FRAMES = 10        # shared_info, zero page, GDT page, stub, stack, per-domain L3/L2/L1, M2P L3/L2


def m2p_superpages_for(nr_machine_frames: int) -> int:
    return (nr_machine_frames + M2P_ENTRIES_PER_SUPERPAGE - 1) // M2P_ENTRIES_PER_SUPERPAGE


def xen_frames_needed(first_mfn: int, nr_after: int = 0) -> int:
    """Frames Xen needs from `first_mfn` on, when `nr_after` more machine frames follow them: the fixed
    frames, then (from the next 2 MiB boundary) the M2P superpages, which cover every machine frame,
    their own included: iterate to the fixed point."""
    start = (first_mfn + FIXED_FRAMES + SUPERPAGE_FRAMES - 1) // SUPERPAGE_FRAMES * SUPERPAGE_FRAMES
    chunks = 1
    while True:
        total = start + chunks * SUPERPAGE_FRAMES + nr_after
        need = m2p_superpages_for(total)
        if need <= chunks:
            return start + chunks * SUPERPAGE_FRAMES - first_mfn
        chunks = need


class XenArea:
    """Allocates and fills Xen's frames above the domain's, and installs the L4 slots."""

    def __init__(self, mem: MachineMemory, frames: FrameTable, first_free_mfn: int) -> None:
        self.mem = mem
        self.frames = frames
        self._next = first_free_mfn
        self.shared_info_mfn = self._alloc()
        self.zero_mfn = self._alloc()
        self.gdt_xen_mfn = self._alloc()
        self.stub_mfn = self._alloc()
        self.stack_mfn = self._alloc()
        self.pd_l3, self.pd_l2, self.pd_l1 = self._alloc(), self._alloc(), self._alloc()
        self.m2p_l3, self.m2p_l2 = self._alloc(), self._alloc()
        self._next = (self._next + SUPERPAGE_FRAMES - 1) // SUPERPAGE_FRAMES * SUPERPAGE_FRAMES
        self.m2p_superpages = [self._alloc_superpage() for _ in range(m2p_superpages_for(mem.nr_frames))]
        if self._next > mem.nr_frames:
            raise RuntimeError("machine memory too small for Xen's frames")
        frames.assign_range(first_free_mfn, self._next, OWNER_XEN)
        self.gdt_frames = [self.zero_mfn] * 16
        self.gdt_frames[FIRST_RESERVED_GDT_PAGE] = self.gdt_xen_mfn
        self._build()

    def _alloc(self) -> int:
        mfn = self._next
        self._next += 1
        return mfn

    def _alloc_superpage(self) -> int:
        mfn = self._next
        self._next += SUPERPAGE_FRAMES
        return mfn

    def _build(self) -> None:
        mem = self.mem
        # M2P: every entry of a machine frame invalid until the builder fills the domain's frames (the pages
        # holding them, whole; the rest of the last superpage stays zero, past max_mfn).
        m2p_bytes = (mem.nr_frames * 8 + 4095) // 4096 * 4096
        for i, base in enumerate(self.m2p_superpages):
            n = min(SUPERPAGE_FRAMES * 4096, m2p_bytes - i * SUPERPAGE_FRAMES * 4096)
            if n > 0:
                mem.mv[base * 4096:base * 4096 + n] = b"\xff" * n
        # The read-only M2P mapping (slot 256 -> L3[0] -> L2[i] -> 2 MiB superpages), as Xen's paging_init.
        mem.write_u64(self.m2p_l3 << 12, (self.m2p_l2 << 12) | M2P_DIR)
        for i, base in enumerate(self.m2p_superpages):
            mem.write_u64((self.m2p_l2 << 12) + i * 8, (base << 12) | M2P_SUPERPAGE)
        # Per-domain area: supervisor-only.
        mem.write_u64(self.pd_l3 << 12, (self.pd_l2 << 12) | UPPER)
        mem.write_u64(self.pd_l2 << 12, (self.pd_l1 << 12) | UPPER)
        self._map_gdt()
        stub_index = (ENTRY_STUB_VA - PERDOMAIN_VIRT_START) >> 12
        stack_index = (HV_STACK_VA - PERDOMAIN_VIRT_START) >> 12
        mem.write_u64((self.pd_l1 << 12) + stub_index * 8, (self.stub_mfn << 12) | _PAGE_PRESENT | _PAGE_ACCESSED)
        mem.write_u64((self.pd_l1 << 12) + stack_index * 8, (self.stack_mfn << 12) | UPPER)
        mem.mv[self.stub_mfn << 12:(self.stub_mfn << 12) + len(IRETQ)] = IRETQ
        # Xen's reserved descriptors, at the selectors a PV guest uses.
        base = self.gdt_xen_mfn << 12
        for sel, desc in ((XEN_CS64, seg_descriptor(True, 0)), (XEN_DS64, seg_descriptor(False, 0)),
                          (FLAT_RING3_CS32, seg_descriptor(True, 3, long_mode=False)),
                          (FLAT_RING3_DS32, seg_descriptor(False, 3)),
                          (FLAT_RING3_CS64, seg_descriptor(True, 3)),
                          (XEN_CS32, seg_descriptor(True, 0, long_mode=False))):
            mem.write_u64(base + (sel & 0xFF8), desc)

    def _map_gdt(self) -> None:
        for i, mfn in enumerate(self.gdt_frames):
            self.mem.write_u64((self.pd_l1 << 12) + i * 8, (mfn << 12) | UPPER)

    def set_guest_gdt(self, mfns: list[int]) -> None:
        """Map the guest's GDT frames (set_gdt) into GDT pages 0..13; the rest become the zero page."""
        for i in range(FIRST_RESERVED_GDT_PAGE):
            self.gdt_frames[i] = mfns[i] if i < len(mfns) else self.zero_mfn
        self._map_gdt()

    def save_gdt(self) -> list[int]:
        """The frames behind the 16 GDT pages (the guest's set_gdt frames, the zero page, Xen's page)."""
        return list(self.gdt_frames)

    def restore_gdt(self, frames: list[int], where: str) -> None:
        if len(frames) != len(self.gdt_frames):
            raise StateError(f"{where} has the wrong length")
        self.gdt_frames[:] = frames

    def private_frames(self) -> list[int]:
        """The frames only Xen writes: its page tables, the entry stub and its stack, its GDT page and the zero
        page (not shared_info or the M2P's entries, which the guest sets through hypercalls)."""
        return [self.zero_mfn, self.gdt_xen_mfn, self.stub_mfn, self.stack_mfn, self.pd_l3, self.pd_l2,
                self.pd_l1, self.m2p_l3, self.m2p_l2]

    def install_l4_slots(self, l4_mfn: int, ro_mpt: bool = True) -> None:
        """Xen's init_xen_l4_slots: every Xen slot written, the M2P slot only if `ro_mpt`."""
        base = l4_mfn << 12
        for slot in range(256, 272):
            self.mem.write_u64(base + slot * 8, 0)
        if ro_mpt:
            self.fill_ro_mpt(l4_mfn)
        self.mem.write_u64(base + PERDOMAIN_SLOT * 8, (self.pd_l3 << 12) | UPPER)

    def fill_ro_mpt(self, l4_mfn: int) -> None:
        """Xen's fill_ro_mpt: give an L4 the read-only M2P slot if it lacks it."""
        ma = (l4_mfn << 12) + M2P_SLOT * 8
        if not self.mem.read_u64(ma):
            self.mem.write_u64(ma, (self.m2p_l3 << 12) | M2P_DIR)

    def zap_ro_mpt(self, l4_mfn: int) -> None:
        """Xen's zap_ro_mpt: an L4 used for guest user mode under VMASST_TYPE_m2p_strict loses the M2P."""
        self.mem.write_u64((l4_mfn << 12) + M2P_SLOT * 8, 0)

    def fill_m2p(self, p2m: "array[int]") -> None:
        """M2P entries for a domain's initial frames, which are exactly the mfns [0, len(p2m)) in some order:
        machine_to_phys[p2m[pfn]] = pfn, written a superpage at a time without a full-size temporary when
        the p2m is the identity."""
        n = len(p2m)
        step = M2P_ENTRIES_PER_SUPERPAGE
        identity = all(p2m[i:i + step] == array("Q", range(i, min(n, i + step))) for i in range(0, n, step))
        for i in range(0, n, step):
            if identity:
                chunk = array("Q", range(i, min(n, i + step)))
            else:
                chunk = array("Q", bytes(8 * (min(n, i + step) - i)))
                for pfn, mfn in enumerate(p2m):
                    if i <= mfn < i + step:
                        chunk[mfn - i] = pfn
            if _BIG_ENDIAN:
                chunk.byteswap()
            base = self.m2p_superpages[i // step] << 12
            self.mem.mv[base:base + 8 * len(chunk)] = memoryview(chunk).cast("B")

    def _m2p_ma(self, mfn: int) -> int:
        return (self.m2p_superpages[mfn // M2P_ENTRIES_PER_SUPERPAGE] << 12) + (mfn % M2P_ENTRIES_PER_SUPERPAGE) * 8

    def set_m2p(self, mfn: int, pfn: int) -> None:
        self.mem.write_u64(self._m2p_ma(mfn), pfn)

    def get_m2p(self, mfn: int) -> int:
        return self.mem.read_u64(self._m2p_ma(mfn))

    @property
    def end_mfn(self) -> int:
        return self._next


assert MACH2PHYS_VIRT_START == 0xFFFF800000000000 and PERDOMAIN_VIRT_START >> 39 & 511 == PERDOMAIN_SLOT
