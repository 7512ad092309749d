"""The domain builder: what libxc's x86 PV builder does before a guest's first instruction.

It loads the kernel, fills the p2m list, start_info, the xenstore and console pages, builds 4-level
bootstrap page tables mapping the start-of-day region 1:1 (page tables read-only) and, if the kernel asks
with INIT_P2M, the p2m list at its own address; validates and pins them
through the same page-type system the guest's own updates go through, writes the hypercall page, zeroes
shared_info with events masked on vCPU 0, and sets the vCPU's entry registers.
"""
from __future__ import annotations

import ctypes
import struct
import sys
from array import array
from typing import Optional

from miniguest.abi.arch_x86 import HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, L1_PROT, L2_PROT, _PAGE_RW, canonical
from miniguest.abi.shared_info import VI_UPCALL_MASK
from miniguest.abi.start_info import XEN_START_INFO_MAGIC, SIF_MOD_START_PFN, start_info
from miniguest.abi.xen import HYPERVISOR_iret
from miniguest.hypervisor.host import Domain, DomainConfig, Host, VcpuContext
from miniguest.toolstack.libelf import ImageError, KernelImage
from miniguest.toolstack.layout import Layout, TableRange, compute_layout, pages

PAGE = 4096


def hypercall_page() -> bytes:
    """Xen's 64-bit PV hypercall page: slot N = push %rcx; push %r11; mov $N,%eax; syscall; pop %r11;
    pop %rcx; ret. The iret slot pushes %rax too and does not return. Unused bytes are int3."""
    page = bytearray(b"\xcc" * PAGE)
    for n in range(PAGE // 32):
        p = n * 32
        if n == HYPERVISOR_iret:
            page[p:p + 11] = b"\x51\x41\x53\x50\xb8" + struct.pack("<I", n) + b"\x0f\x05"
        else:
            page[p:p + 14] = b"\x51\x41\x53\xb8" + struct.pack("<I", n) + b"\x0f\x05\x41\x5b\x59\xc3"
    return bytes(page)


class Builder:
    def __init__(self, domain: Domain, image: KernelImage) -> None:
        self.d = domain
        self.image = image

    def mfn_of_va(self, va: int) -> int:
        return self.d.p2m[(va - self.layout.virt_base) // PAGE]

    def ma_of_va(self, va: int) -> int:
        return self.mfn_of_va(va) * PAGE + (va & (PAGE - 1))

    def write_va(self, va: int, data: bytes) -> None:
        """Write into the bootstrap mapping (va relative to virt_base)."""
        self.write_pfn(self.layout.pfn(va), data, va & (PAGE - 1))

    def write_pfn(self, pfn: int, data: bytes, offset: int = 0) -> None:
        """Write guest-physically, from byte `offset` of page `pfn` on."""
        mv = self.d.mem.mv
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, PAGE - offset)
            ma = self.d.p2m[pfn] * PAGE + offset
            mv[ma:ma + n] = data[pos:pos + n]
            pos += n
            pfn += 1
            offset = 0

    def build(self) -> None:
        d, img = self.d, self.image
        notes = img.notes
        module = d.config.module or b""
        self.layout = layout = compute_layout(img.virt_base, img.virt_kstart, img.virt_kend, d.nr_pages,
                                              len(module), p2m_base=notes.init_p2m,
                                              unmapped_module=notes.mod_start_pfn)
        d.layout = layout
        need = layout.total_pages
        if need > d.nr_pages:
            raise ImageError(f"{img.path}: the image and its start-of-day data need {need * 4} KiB, more than the "
                             f"{d.nr_pages * 4} KiB of memory given")
        if layout.p2m_base is not None:
            end = layout.p2m_base + layout.p2m_frames * PAGE
            if end > img.virt_base or not canonical(layout.p2m_base) or not canonical(end - 1) or (
                    layout.p2m_base < HYPERVISOR_VIRT_END and end > HYPERVISOR_VIRT_START):
                raise ImageError(f"{img.path}: INIT_P2M: the p2m list at {layout.p2m_base:#x}-{end:#x} overlaps "
                                 "the bootstrap mapping or the hypervisor area, or is not canonical")
        if d.config.poison_memory:
            for mfn in d.p2m:
                ctypes.memset(d.mem.address + mfn * PAGE, 0xA5, PAGE)
            # Every start-of-day element starts zeroed.
            first = layout.p2m_pfn if layout.p2m_base is None else layout.pfn(layout.start_info)
            for pfn in range(first, layout.pfn(layout.stack) + 1):
                self.write_pfn(pfn, bytes(PAGE))
            if layout.p2m_base is not None:
                for pfn in range(layout.p2m_pfn, layout.p2m_pfn + layout.p2m_seg_pages):
                    self.write_pfn(pfn, bytes(PAGE))
        # Kernel segments, then BSS: the zero-filled rest of each segment.
        for seg in img.segments:
            self.write_va(seg.vaddr, seg.data)
            if seg.memsz > len(seg.data):
                self.write_va(seg.vaddr + len(seg.data), bytes(seg.memsz - len(seg.data)))
        if module:
            self.write_pfn(layout.mod_pfn, module)
            tail = -len(module) % PAGE
            if tail:
                self.write_pfn(layout.mod_pfn + len(module) // PAGE, bytes(tail), len(module) % PAGE)
        # p2m list.
        p2m = d.p2m if isinstance(d.p2m, array) else array("Q", d.p2m)
        self.write_pfn(layout.p2m_pfn, memoryview(p2m).cast("B") if sys.byteorder == "little"
                       else struct.pack(f"<{d.nr_pages}Q", *p2m))
        self._page_tables()
        self._start_info()
        if notes.hypercall_page is not None:
            self.write_va(notes.hypercall_page, hypercall_page())
        # shared_info: zero, events masked on vCPU 0 until the guest is ready.
        d.shared_info_view()[:] = bytes(PAGE)
        d.shared_info_view()[VI_UPCALL_MASK] = 1
        d.set_wallclock(*d.config.wallclock)
        d.create_vcpus(1)
        d.host.set_vcpu_context(d.domid, 0, VcpuContext(notes.entry, layout.stack + PAGE, layout.start_info,
                                                         self.l4_mfn))
        d.image = img
        d.start_info_va = layout.start_info

    def _page_tables(self) -> None:
        """The bootstrap page tables (xg_dom_x86.c setup_pgtables_pv): the 1:1 mapping of the start-of-day
        region and, with INIT_P2M, the mapping of the p2m list at the kernel's address. Upper levels
        P|RW|A|D|U, leaves P|RW|A, every page-table page mapped read-only."""
        d, layout = self.d, self.layout
        n4, n3, n2, n1 = layout.pt_counts
        pt_pfn = layout.pfn(layout.pt_base)
        start = layout.virt_base
        ranges = [TableRange(3, start >> 39, n3, pt_pfn + 1), TableRange(2, start >> 30, n2, pt_pfn + 1 + n3),
                  TableRange(1, start >> 21, n1, pt_pfn + 1 + n3 + n2)] + layout.p2m_tables
        ro = [(pt_pfn, pt_pfn + layout.nr_pt_frames)]
        if layout.p2m_tables:
            first = layout.p2m_tables[0].pfn
            ro.append((first, first + sum(t.count for t in layout.p2m_tables)))
        mem, p2m = d.mem, d.p2m

        def table(va: int, level: int) -> int:
            for r in ranges:
                if r.level == level:
                    pfn = r.table_pfn(va)
                    if pfn is not None:
                        return pfn
            raise AssertionError(f"no level-{level} table for {va:#x}")   # the layout sized them

        def map_pages(va: int, first_pfn: int, count: int) -> None:
            parents = (pt_pfn, None, None, None)
            for i in range(count):
                v = va + i * PAGE
                pfn = first_pfn + i
                if i == 0 or v & ((1 << 21) - 1) == 0:
                    l3, l2, l1 = table(v, 3), table(v, 2), table(v, 1)
                    parents = (pt_pfn, l3, l2, l1)
                    for parent, child, shift in ((pt_pfn, l3, 39), (l3, l2, 30), (l2, l1, 21)):
                        mem.write_u64(p2m[parent] * PAGE + ((v >> shift) & 511) * 8, p2m[child] * PAGE | L2_PROT)
                prot = L1_PROT & ~_PAGE_RW if any(a <= pfn < b for a, b in ro) else L1_PROT
                mem.write_u64(p2m[parents[3]] * PAGE + ((v >> 12) & 511) * 8, p2m[pfn] * PAGE | prot)

        map_pages(start, 0, min(layout.mapped_pages, d.nr_pages))
        if layout.p2m_base is not None:
            map_pages(layout.p2m_base, layout.p2m_pfn, layout.p2m_frames)
        self.l4_mfn = p2m[pt_pfn]
        # Validate and pin the top-level table as libxc does (MMUEXT_PIN_L4_TABLE); the vCPU context takes
        # the CR3 reference. This promotes every table and takes a writable reference on every RW-mapped frame.
        d.host.pin_table(d.domid, self.l4_mfn, 4)

    def _start_info(self) -> None:
        d, layout, img = self.d, self.layout, self.image
        si = start_info()
        si.magic = XEN_START_INFO_MAGIC
        si.nr_pages = d.nr_pages
        si.shared_info = d.xen.shared_info_mfn * PAGE
        si.flags = 0
        si.store_mfn = self.mfn_of_va(layout.xenstore)
        si.console_mfn = self.mfn_of_va(layout.console)
        si.store_evtchn = d.events.alloc_toolstack_port()
        si.console_evtchn = d.events.alloc_toolstack_port()
        si.pt_base = layout.pt_base
        si.nr_pt_frames = layout.nr_pt_frames
        si.mfn_list = layout.p2m_start
        if layout.mod_len:
            if layout.mod_mapped:
                si.mod_start = layout.mod_start
                si.mod_len = layout.mod_len
            else:
                # An unmapped initrd (MOD_START_PFN): its pfn, and its length in whole pages (as libxenguest).
                si.flags |= SIF_MOD_START_PFN
                si.mod_start = layout.mod_pfn
                si.mod_len = pages(layout.mod_len) * PAGE
        cmd = d.config.cmdline.encode()[:1023]
        si.cmd_line = cmd
        si.first_p2m_pfn = layout.p2m_pfn
        si.nr_p2m_frames = layout.p2m_seg_pages
        self.write_va(layout.start_info, bytes(si))
        self.store_evtchn = si.store_evtchn
        self.console_evtchn = si.console_evtchn


def build_domain(image: KernelImage, config: DomainConfig, host: Optional[Host] = None,
                 domain_class: type = Domain) -> tuple[Domain, Builder]:
    domain = (host or Host()).create_domain(config, domain_class)
    builder = Builder(domain, image)
    try:
        builder.build()
    except Exception:
        domain.close()
        raise
    return domain, builder


__all__ = ["build_domain", "hypercall_page", "Layout"]
