"""The start-of-day virtual layout of a PV domain, computed the way libxc's x86 PV builder does
(tools/libs/guest/xg_dom_core.c xc_dom_build_image, xg_dom_x86.c).

Elements are packed, page-aligned, in this order from the kernel image up (xen.h "start of day" comment):
kernel image, module, p2m list, start_info, xenstore ring, console ring, bootstrap page tables, boot stack.
The bootstrap mapping covers [virt_base, virt_pgtab_end) where virt_pgtab_end is the first 4 MiB boundary
leaving at least 512 KiB free after the last element; the page tables are sized to map exactly that.

Two ELF notes move things out of that mapping, as libxenguest does:
- MOD_START_PFN ("unmapped initrd"): the module goes after the mapped region, unmapped; start_info gives
  its first pfn (SIF_MOD_START_PFN) and its length rounded up to whole pages.
- INIT_P2M: the p2m list goes last, after the module, followed by the page tables that map it at the
  virtual address the kernel asked for; start_info.mfn_list is that address and first_p2m_pfn /
  nr_p2m_frames cover the list and those tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

PAGE = 4096
PAD_AFTER = 512 * 1024
ALIGN_4M = 4 << 20
LEVEL_SHIFTS = (12, 21, 30, 39)          # one level-l table (l = 1: an L1) per distinct va >> LEVEL_SHIFTS[l]


def pages(nbytes: int) -> int:
    return (nbytes + PAGE - 1) // PAGE


@dataclass
class TableRange:
    """The page tables one mapping needs at one level: tables for indexes [first, first + count) of
    va >> shift (shift 21 for L1 tables, 30 for L2, 39 for L3), in consecutive pfns from `pfn`."""
    level: int              # 1 = L1 tables, 2 = L2, 3 = L3
    first: int
    count: int
    pfn: int

    @property
    def shift(self) -> int:
        return LEVEL_SHIFTS[self.level]

    def table_pfn(self, va: int) -> Optional[int]:
        i = (va >> self.shift) - self.first
        return self.pfn + i if 0 <= i < self.count else None


@dataclass
class Layout:
    virt_base: int
    kernel_start: int       # virt_kstart rounded down to a page
    kernel_end: int         # page-aligned end of the image (BSS included)
    mod_start: int          # VA of the module (0 if none, or if it is unmapped)
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
    mod_pfn: int = 0        # first pfn of the module
    mod_mapped: bool = True
    p2m_pfn: int = 0        # first pfn of the p2m list
    p2m_base: Optional[int] = None          # INIT_P2M: where the p2m list is mapped
    p2m_seg_pages: int = 0  # pages of the p2m segment (the list, and with INIT_P2M the tables mapping it)
    p2m_tables: list[TableRange] = field(default_factory=list)   # INIT_P2M: the tables mapping the list
    total_pages: int = 0    # pages every element needs, padding included

    def pfn(self, va: int) -> int:
        """The pfn of an address in the bootstrap mapping."""
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


def _extra_tables(start: int, end: int, base_start: int, base_end: int, first_pfn: int) -> list[TableRange]:
    """Tables a second mapping [start, end) needs beyond those of the first one [base_start, base_end) (which
    has the L4), allocated level by level from the top in consecutive pfns (xg_dom_x86.c count_pgtables)."""
    out: list[TableRange] = []
    pfn = first_pfn
    for level in (3, 2, 1):
        shift = LEVEL_SHIFTS[level]
        lo, hi = start >> shift, (end - 1) >> shift
        blo, bhi = base_start >> shift, (base_end - 1) >> shift
        if blo <= lo and hi <= bhi:
            continue                                    # all shared with the first mapping
        if lo <= bhi and hi >= blo:                     # partly shared: trim the shared end
            if lo >= blo:
                lo = bhi + 1
            else:
                hi = blo - 1
        out.append(TableRange(level, lo, hi - lo + 1, pfn))
        pfn += hi - lo + 1
    return out


def compute_layout(virt_base: int, virt_kstart: int, virt_kend: int, nr_pages: int, mod_len: int,
                   p2m_base: Optional[int] = None, unmapped_module: bool = False) -> Layout:
    kernel_start = virt_kstart & ~(PAGE - 1)
    kernel_end = (virt_kend + PAGE - 1) & ~(PAGE - 1)
    # libxenguest ignores an INIT_P2M address at or above virt_base or not page-aligned.
    if p2m_base is not None and (p2m_base >= virt_base or p2m_base % PAGE):
        p2m_base = None
    cur = kernel_end
    mod_start = 0
    if mod_len and not unmapped_module:
        mod_start = cur
        cur += pages(mod_len) * PAGE
    p2m_frames = pages(nr_pages * 8)
    p2m_start = 0
    if p2m_base is None:
        p2m_start = cur
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
    layout = Layout(virt_base=virt_base, kernel_start=kernel_start, kernel_end=kernel_end, mod_start=mod_start,
                    mod_len=mod_len, p2m_start=p2m_start, p2m_frames=p2m_frames, start_info=start_info,
                    xenstore=xenstore, console=console, pt_base=pt_base, nr_pt_frames=npt, pt_counts=counts,
                    stack=stack, virt_pgtab_end=try_end, nr_pages=nr_pages)
    next_pfn = layout.pfn(try_end)
    if mod_len:
        if unmapped_module:
            layout.mod_mapped = False
            layout.mod_pfn = next_pfn
            next_pfn += pages(mod_len)
        else:
            layout.mod_pfn = layout.pfn(mod_start)
    if p2m_base is None:
        layout.p2m_pfn = layout.pfn(p2m_start)
        layout.p2m_seg_pages = p2m_frames
    else:
        layout.p2m_base = layout.p2m_start = p2m_base
        layout.p2m_pfn = next_pfn
        size = p2m_frames * PAGE
        layout.p2m_tables = _extra_tables(p2m_base, p2m_base + size, virt_base, try_end, next_pfn + p2m_frames)
        layout.p2m_seg_pages = p2m_frames + sum(t.count for t in layout.p2m_tables)
        next_pfn += layout.p2m_seg_pages
    # What lies past the bootstrap mapping needs all of it backed; otherwise (as before) the mapping may
    # stop short of virt_pgtab_end when memory does.
    placed_after = next_pfn if next_pfn != layout.pfn(try_end) else 0
    layout.total_pages = max(placed_after, layout.used_pages + PAD_AFTER // PAGE)
    return layout
