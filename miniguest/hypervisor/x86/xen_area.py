"""What Xen itself keeps in a PV guest's address space: the L4 slots 256..271.

Two things live there for us, both in machine frames owned by Xen:
- the read-only machine-to-phys table at MACH2PHYS_VIRT_START (slot 256), readable by the guest;
- a per-domain area (slot 260, Xen's PERDOMAIN_VIRT_START) holding the 64 KiB GDT (guest frames in pages
  0-13 once set_gdt is used, Xen's flat selectors in page 14), the stub that enters the guest at CPL3 with
  `iretq`, and its stack. These pages are supervisor-only, so the guest (always at CPL3) cannot touch them,
  while the CPU can read the GDT to load segment descriptors.
Every L4 the guest gets validated receives these slot entries (Xen's init_xen_l4_slots).
"""
from __future__ import annotations

import struct

from miniguest.abi.arch_x86 import (FIRST_RESERVED_GDT_PAGE, FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_DS32,
                                    MACH2PHYS_VIRT_START, XEN_CS32, XEN_CS64, XEN_DS64, _PAGE_ACCESSED,
                                    _PAGE_DIRTY, _PAGE_NX, _PAGE_PRESENT, _PAGE_RW, _PAGE_USER)
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

_U64 = struct.Struct("<Q")
UPPER = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY


def m2p_frames_for(nr_machine_frames: int) -> int:
    return (nr_machine_frames * 8 + 4095) // 4096


def xen_frames_needed(nr_domain_frames: int) -> int:
    """Frames Xen needs beside the domain's: shared_info, zero page, GDT page, stub, stack, the per-domain
    L3/L2/L1, the M2P L3/L2, the M2P L1s and the M2P itself (which covers every machine frame, itself
    included: iterate to the fixed point)."""
    fixed = 1 + 1 + 1 + 1 + 1 + 3 + 2
    extra = 0
    while True:
        total = nr_domain_frames + fixed + extra
        m2p = m2p_frames_for(total)
        l1s = (m2p + 511) // 512
        if fixed + m2p + l1s <= fixed + extra:
            return fixed + extra
        extra = m2p + l1s


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
        self.m2p_nr = m2p_frames_for(mem.nr_frames)
        self.m2p_l1s = [self._alloc() for _ in range((self.m2p_nr + 511) // 512)]
        self.m2p_mfns = [self._alloc() for _ in range(self.m2p_nr)]
        if self._next > mem.nr_frames:
            raise RuntimeError("machine memory too small for Xen's frames")
        for mfn in range(first_free_mfn, self._next):
            frames.owner[mfn] = OWNER_XEN
        self.gdt_frames = [self.zero_mfn] * 16
        self.gdt_frames[FIRST_RESERVED_GDT_PAGE] = self.gdt_xen_mfn
        self._build()

    def _alloc(self) -> int:
        mfn = self._next
        self._next += 1
        return mfn

    def _build(self) -> None:
        mem = self.mem
        # M2P: every entry invalid until the builder fills the domain's frames.
        for mfn in self.m2p_mfns:
            mem.mv[mfn * 4096:(mfn + 1) * 4096] = b"\xff" * 4096
        # M2P mapping: read-only, user-visible (slot 256 -> L3[0] -> L2[0] -> L1s).
        mem.write_u64(self.m2p_l3 << 12, (self.m2p_l2 << 12) | UPPER | _PAGE_USER)
        for i, l1 in enumerate(self.m2p_l1s):
            mem.write_u64((self.m2p_l2 << 12) + i * 8, (l1 << 12) | UPPER | _PAGE_USER)
        for i, mfn in enumerate(self.m2p_mfns):
            l1 = self.m2p_l1s[i // 512]
            # Read-only, user-visible, not executable (Xen maps it __PAGE_HYPERVISOR_RO | _PAGE_USER).
            mem.write_u64((l1 << 12) + (i % 512) * 8,
                          (mfn << 12) | _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_USER | _PAGE_NX)
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
            mem.write_u64(base + (sel & 0xFF8) , desc)

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

    def install_l4_slots(self, l4_mfn: int) -> None:
        base = l4_mfn << 12
        for slot in range(256, 272):
            self.mem.write_u64(base + slot * 8, 0)
        self.mem.write_u64(base + M2P_SLOT * 8, (self.m2p_l3 << 12) | UPPER | _PAGE_USER)
        self.mem.write_u64(base + PERDOMAIN_SLOT * 8, (self.pd_l3 << 12) | UPPER)

    def set_m2p(self, mfn: int, pfn: int) -> None:
        idx = mfn
        self.mem.write_u64((self.m2p_mfns[idx // 512] << 12) + (idx % 512) * 8, pfn)

    def get_m2p(self, mfn: int) -> int:
        return self.mem.read_u64((self.m2p_mfns[mfn // 512] << 12) + (mfn % 512) * 8)

    @property
    def end_mfn(self) -> int:
        return self._next


assert MACH2PHYS_VIRT_START == 0xFFFF800000000000 and PERDOMAIN_VIRT_START >> 39 & 511 == PERDOMAIN_SLOT
