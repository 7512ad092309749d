"""Descriptor tables of a PV guest: set_gdt and update_descriptor, with Xen's check_descriptor (Xen:
xen/arch/x86/pv/descriptor-tables.c)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from miniguest.abi import errno
from miniguest.abi.arch_x86 import FIRST_RESERVED_GDT_ENTRY
from miniguest.abi.xen import HYPERVISOR_set_gdt, HYPERVISOR_update_descriptor
from miniguest.hypervisor.decode import DecodeCtx, Decoded
from miniguest.hypervisor.hypercall import Hypercall
from miniguest.hypervisor.x86.page_types import PGT_seg_desc, PGT_writable, PageTypeError

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu


def check_descriptor(desc: int) -> Optional[int]:
    """Xen's check_descriptor for a 64-bit PV guest: the descriptor to store, or None if refused."""
    hi = desc >> 32
    if not hi & (1 << 15):                  # not present: always safe
        return desc
    dpl = (hi >> 13) & 3
    if dpl < 3:                              # the guest kernel runs in ring 3
        hi = (hi & ~(3 << 13)) | (3 << 13)
    if hi & (1 << 12):                       # code or data segment
        return (hi << 32) | (desc & 0xFFFFFFFF)
    if (hi >> 8) & 0xF == 0:                 # type 0: harmless (second half of a call gate)
        return desc
    return None                              # system descriptors and gates are not offered here


def set_gdt(vcpu: "Vcpu", frame_list: int, entries: int) -> int:
    dom = vcpu.domain
    entries &= 0xFFFFFFFF
    if entries > FIRST_RESERVED_GDT_ENTRY:
        return -errno.EINVAL
    nr = (entries + 511) // 512
    mfns = list(struct.unpack(f"<{nr}Q", vcpu.mem.read(frame_list, 8 * nr))) if nr else []
    taken: list[int] = []
    try:
        for mfn in mfns:
            dom.frames.get_type(mfn, PGT_seg_desc, dom.domid)
            taken.append(mfn)
            base = mfn << 12
            for i in range(512):
                d = dom.mem.read_u64(base + 8 * i)
                fixed = check_descriptor(d)
                if fixed is None:
                    raise PageTypeError(-errno.EINVAL, f"bad descriptor {i} in GDT frame {mfn:#x}")
                if fixed != d:
                    dom.mem.write_u64(base + 8 * i, fixed)
    except PageTypeError as e:
        for mfn in taken:
            dom.frames.put_type(mfn)
        return e.err
    for mfn in vcpu.gdt_frames:
        dom.frames.put_type(mfn)
    vcpu.gdt_frames = mfns
    vcpu.gdt_ents = entries
    dom.xen.set_guest_gdt(mfns)
    vcpu.flush_tlb()
    return 0


def update_descriptor(vcpu: "Vcpu", ma: int, desc: int) -> int:
    dom = vcpu.domain
    mfn = ma >> 12
    if ma & 7 or mfn >= dom.mem.nr_frames or dom.frames.owner[mfn] != dom.domid:
        return -errno.EINVAL
    fixed = check_descriptor(desc)
    if fixed is None:
        return -errno.EINVAL
    if dom.frames.type[mfn] == PGT_seg_desc and dom.frames.count[mfn]:
        dom.mem.write_u64(ma, fixed)
        return 0
    try:
        dom.frames.get_type(mfn, PGT_writable, dom.domid)
    except PageTypeError:
        return -errno.EINVAL
    dom.mem.write_u64(ma, fixed)
    dom.frames.put_type(mfn)
    return 0


def _set_gdt_in(ctx: DecodeCtx) -> Decoded:
    entries = ctx.args[1] & 0xFFFFFFFF
    nr = min((entries + 511) // 512, 16)
    frames = list(ctx.unpack(f"<{nr}Q", ctx.args[0])) if nr else []
    return {"entries": entries, "frames": frames}


def _update_descriptor_in(ctx: DecodeCtx) -> Decoded:
    return {"ma": ctx.args[0], "desc": ctx.args[1]}


HYPERCALLS = (Hypercall(HYPERVISOR_set_gdt, "set_gdt", set_gdt, 2, decode_in=_set_gdt_in),
              Hypercall(HYPERVISOR_update_descriptor, "update_descriptor", update_descriptor, 2,
                        decode_in=_update_descriptor_in))
