"""The domain builder: what libxc's x86 PV builder does before a guest's first instruction.

It loads the kernel, fills the p2m list, start_info, the xenstore and console pages, builds 4-level
bootstrap page tables mapping the start-of-day region 1:1 (page tables read-only), validates and pins them
through the same page-type system the guest's own updates go through, writes the hypercall page, zeroes
shared_info with events masked on vCPU 0, and sets the vCPU's entry registers.
"""
from __future__ import annotations

import struct
from typing import Optional

from miniguest.abi.arch_x86 import L1_PROT, L2_PROT, _PAGE_RW
from miniguest.abi.shared_info import VI_UPCALL_MASK
from miniguest.abi.start_info import XEN_START_INFO_MAGIC, SIF_MOD_START_PFN, start_info
from miniguest.abi.xen import HYPERVISOR_iret
from miniguest.hypervisor.domain import Domain, DomainConfig
from miniguest.hypervisor.host import Host
from miniguest.hypervisor.x86.page_types import PGT_l4
from miniguest.toolstack.libelf import ImageError, KernelImage
from miniguest.toolstack.layout import PAD_AFTER, Layout, compute_layout

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
        off = 0
        while off < len(data):
            n = min(len(data) - off, PAGE - ((va + off) & (PAGE - 1)))
            ma = self.ma_of_va(va + off)
            self.d.mem.mv[ma:ma + n] = data[off:off + n]
            off += n

    def build(self) -> None:
        d, img = self.d, self.image
        notes = img.notes
        if notes.init_p2m is not None:
            raise ImageError(f"{img.path}: XEN_ELFNOTE_INIT_P2M (a relocated p2m list) is not supported")
        module = d.config.module or b""
        self.layout = layout = compute_layout(img.virt_base, img.virt_kstart, img.virt_kend, d.nr_pages,
                                              len(module))
        d.layout = layout
        need = layout.used_pages + PAD_AFTER // PAGE
        if need > d.nr_pages:
            raise ImageError(f"{img.path}: the image and its start-of-day data need {need * 4} KiB, more than the "
                             f"{d.nr_pages * 4} KiB of memory given")
        if d.config.poison_memory:
            import ctypes
            for mfn in d.p2m:
                ctypes.memset(d.mem.address + mfn * PAGE, 0xA5, PAGE)
            for va in range(layout.p2m_start, layout.stack + PAGE, PAGE):
                self.write_va(va, bytes(PAGE))       # every start-of-day element starts zeroed
        # Kernel segments, then BSS: the zero-filled rest of each segment.
        for seg in img.segments:
            self.write_va(seg.vaddr, seg.data)
            if seg.memsz > len(seg.data):
                self.write_va(seg.vaddr + len(seg.data), bytes(seg.memsz - len(seg.data)))
        if module:
            self.write_va(layout.mod_start, module)
        # p2m list.
        self.write_va(layout.p2m_start, struct.pack(f"<{d.nr_pages}Q", *d.p2m))
        self._page_tables()
        self._start_info()
        if notes.hypercall_page is not None:
            self.write_va(notes.hypercall_page, hypercall_page())
        # shared_info: zero, events masked on vCPU 0 until the guest is ready.
        d.shared_info_view()[:] = bytes(PAGE)
        d.shared_info_view()[VI_UPCALL_MASK] = 1
        from miniguest.hypervisor.common.time import set_wallclock, update_vcpu_time
        set_wallclock(d, *d.config.wallclock)
        d.create_vcpus(1)
        vcpu = d.vcpus[0]
        update_vcpu_time(vcpu)
        vcpu.start_of_day(notes.entry, layout.stack + PAGE, layout.start_info, self.l4_mfn)
        d.image = img
        d.start_info_va = layout.start_info

    def _page_tables(self) -> None:
        d, layout = self.d, self.layout
        n4, n3, n2, n1 = layout.pt_counts
        pt_vas = [layout.pt_base + i * PAGE for i in range(layout.nr_pt_frames)]
        l4 = pt_vas[0]
        l3s = pt_vas[1:1 + n3]
        l2s = pt_vas[1 + n3:1 + n3 + n2]
        l1s = pt_vas[1 + n3 + n2:]
        start = layout.virt_base
        mapped = min(layout.mapped_pages, d.nr_pages)
        end = start + mapped * PAGE
        pt_start, pt_end = layout.pt_base, layout.pt_base + layout.nr_pt_frames * PAGE
        mem = d.mem

        def entry_ma(table_va: int, index: int) -> int:
            return self.mfn_of_va(table_va) * PAGE + index * 8

        def idx(va: int, shift: int) -> int:
            return (va >> shift) & 511

        first3, first2, first1 = start >> 39, start >> 30, start >> 21
        for va in range(start, end, PAGE):
            l3 = l3s[(va >> 39) - first3]
            l2 = l2s[(va >> 30) - first2]
            l1 = l1s[(va >> 21) - first1]
            mem.write_u64(entry_ma(l4, idx(va, 39)), self.mfn_of_va(l3) * PAGE | L2_PROT)
            mem.write_u64(entry_ma(l3, idx(va, 30)), self.mfn_of_va(l2) * PAGE | L2_PROT)
            mem.write_u64(entry_ma(l2, idx(va, 21)), self.mfn_of_va(l1) * PAGE | L2_PROT)
            prot = L1_PROT & ~_PAGE_RW if pt_start <= va < pt_end else L1_PROT
            mem.write_u64(entry_ma(l1, idx(va, 12)), self.mfn_of_va(va) * PAGE | prot)
        self.l4_mfn = self.mfn_of_va(l4)
        # Validate and pin the top-level table as libxc does (MMUEXT_PIN_L4_TABLE), then take the CR3
        # reference. This promotes every table and takes a writable reference on every RW-mapped frame.
        d.frames.pin(self.l4_mfn, PGT_l4, d.domid)
        d.frames.get_type(self.l4_mfn, PGT_l4, d.domid)

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
            if img.notes.mod_start_pfn:
                si.flags |= SIF_MOD_START_PFN
                si.mod_start = layout.pfn(layout.mod_start)
            else:
                si.mod_start = layout.mod_start
        si.mod_len = layout.mod_len
        cmd = d.config.cmdline.encode()[:1023]
        si.cmd_line = cmd
        si.first_p2m_pfn = layout.pfn(layout.p2m_start)
        si.nr_p2m_frames = layout.p2m_frames
        self.write_va(layout.start_info, bytes(si))
        self.store_evtchn = si.store_evtchn
        self.console_evtchn = si.console_evtchn


def build_domain(image: KernelImage, config: DomainConfig, host: Optional[Host] = None) -> tuple[Domain, Builder]:
    domain = Domain(config, host)
    builder = Builder(domain, image)
    try:
        builder.build()
    except Exception:
        domain.close()
        raise
    return domain, builder


__all__ = ["build_domain", "hypercall_page", "Layout"]
