"""The start-of-day virtual layout of a PV domain, computed the way libxc's x86 PV builder does.

Elements are packed, page-aligned, in this order from the kernel image up (xen.h "start of day" comment):
kernel image, module, p2m list, start_info, xenstore ring, console ring, bootstrap page tables, boot stack.
The bootstrap mapping covers [virt_base, virt_pgtab_end) where virt_pgtab_end is the first 4 MiB boundary
leaving at least 512 KiB free after the last element; the page tables are sized to map exactly that.
"""
from __future__ import annotations

from dataclasses import dataclass

PAGE = 4096
PAD_AFTER = 512 * 1024
ALIGN_4M = 4 << 20


def pages(nbytes: int) -> int:
    return (nbytes + PAGE - 1) // PAGE


@dataclass
class Layout:
    virt_base: int
    kernel_start: int       # virt_kstart rounded down to a page
    kernel_end: int         # page-aligned end of the image (BSS included)
    mod_start: int          # VA of the module (0 if none)
    mod_len: int
    p2m_start: int          # VA of the p2m list (mfn_list)
    p2m_frames: int
    start_info: int
    xenstore: int
    console: int
    pt_base: int            # VA of the L4; the page tables follow it contiguously
    nr_pt_frames: int
    pt_counts: tuple[int, int, int, int]   # number of L4, L3, L2, L1 tables
    stack: int              # VA of the boot stack page; RSP starts at stack + 4096
    virt_pgtab_end: int     # end (exclusive) of the bootstrap 1:1 mapping
    nr_pages: int

    def pfn(self, va: int) -> int:
        return (va - self.virt_base) // PAGE

    @property
    def used_pages(self) -> int:
        """Pages up to and including the boot stack (what the guest must not treat as free)."""
        return self.pfn(self.stack) + 1

    @property
    def mapped_pages(self) -> int:
        return (self.virt_pgtab_end - self.virt_base) // PAGE


def _tables_needed(start: int, end: int) -> tuple[int, int, int, int]:
    """Tables needed to map [start, end) with 4 KiB pages: one per distinct index at each level."""
    last = end - 1
    l3 = (last >> 39) - (start >> 39) + 1
    l2 = (last >> 30) - (start >> 30) + 1
    l1 = (last >> 21) - (start >> 21) + 1
    return 1, l3, l2, l1


def compute_layout(virt_base: int, virt_kstart: int, virt_kend: int, nr_pages: int, mod_len: int) -> Layout:
    kernel_start = virt_kstart & ~(PAGE - 1)
    kernel_end = (virt_kend + PAGE - 1) & ~(PAGE - 1)
    cur = kernel_end
    mod_start = 0
    if mod_len:
        mod_start = cur
        cur += pages(mod_len) * PAGE
    p2m_start = cur
    p2m_frames = pages(nr_pages * 8)
    cur += p2m_frames * PAGE
    start_info = cur
    cur += PAGE
    xenstore = cur
    cur += PAGE
    console = cur
    cur += PAGE
    virt_alloc_end = cur
    extra = 1 + PAD_AFTER // PAGE          # boot stack + padding
    npages = extra
    while True:
        try_end = ((virt_alloc_end + npages * PAGE + ALIGN_4M - 1) // ALIGN_4M) * ALIGN_4M
        counts = _tables_needed(virt_base, try_end)
        npt = sum(counts)
        npages = npt + extra
        if virt_alloc_end + npages * PAGE <= try_end:
            break
    pt_base = virt_alloc_end
    stack = pt_base + npt * PAGE
    return Layout(virt_base=virt_base, kernel_start=kernel_start, kernel_end=kernel_end, mod_start=mod_start,
                  mod_len=mod_len, p2m_start=p2m_start, p2m_frames=p2m_frames, start_info=start_info,
                  xenstore=xenstore, console=console, pt_base=pt_base, nr_pt_frames=npt, pt_counts=counts,
                  stack=stack, virt_pgtab_end=try_end, nr_pages=nr_pages)
