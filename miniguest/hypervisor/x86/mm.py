"""Page-table hypercalls: mmu_update, mmuext_op, update_va_mapping, vm_assist.

All of them go through the FrameTable (page_types.py), which enforces Xen's rules. After any change the
Unicorn TLB is flushed: Xen requires the guest to ask for flushes, but flushing more than asked is always
allowed, and it closes the window where a stale writable translation outlives a frame's promotion to a
page table.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import errno
from miniguest.abi.arch_x86 import _PAGE_PRESENT, _PAGE_PSE, PTE_ADDR_MASK
from miniguest.abi.xen import (DOMID_SELF, HYPERVISOR_mmu_update, HYPERVISOR_mmuext_op,
                               HYPERVISOR_update_va_mapping, HYPERVISOR_update_va_mapping_otherdomain,
                               HYPERVISOR_vm_assist, MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE,
                               MMU_PT_UPDATE_PRESERVE_AD, MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE,
                               MMUEXT_FLUSH_CACHE, MMUEXT_FLUSH_CACHE_GLOBAL, MMUEXT_INVLPG_ALL,
                               MMUEXT_INVLPG_LOCAL, MMUEXT_INVLPG_MULTI, MMUEXT_NAMES, MMUEXT_NEW_BASEPTR,
                               MMUEXT_NEW_USER_BASEPTR, MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L4_TABLE,
                               MMUEXT_SET_LDT, MMUEXT_TLB_FLUSH_ALL, MMUEXT_TLB_FLUSH_LOCAL,
                               MMUEXT_TLB_FLUSH_MULTI, MMUEXT_UNPIN_TABLE, UVMF_ALL, UVMF_FLUSHTYPE_MASK,
                               UVMF_INVLPG, UVMF_LOCAL, UVMF_TLB_FLUSH, VMASST_CMD_disable, VMASST_CMD_enable,
                               VMASST_VALID_PV64)
from miniguest.hypervisor.decode import DecodeCtx, Decoded, domid, put_list
from miniguest.hypervisor.hypercall import Hypercall, HypercallError, SubOp, SubOps
from miniguest.hypervisor.ram import GuestFault, guest_range_ok
from miniguest.hypervisor.x86.page_types import PGT_l1, PGT_l4, PGT_writable, TYPE_NAMES, PageTypeError

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.vcpu import Vcpu

MMU_UPDATE_PREEMPTED = 1 << 31
_ENTRY = struct.Struct("<QQ")
_MMUEXT = struct.Struct("<I4xQQ")


def _check_owner(vcpu: "Vcpu", foreigndom: int) -> None:
    """Only DOMID_SELF (or our own id) may be named: an unprivileged domain has no foreign page owner."""
    dom = vcpu.domain
    pt_dom = (foreigndom >> 16) & 0xFFFF
    pg = foreigndom & 0xFFFF
    if pt_dom and pt_dom - 1 != dom.domid:
        raise HypercallError(-errno.ESRCH, f"no page-table owner d{pt_dom - 1}")
    if pg not in (DOMID_SELF, dom.domid):
        raise HypercallError(-errno.ESRCH, f"cannot use pages of d{pg}")


def _report_done(vcpu: "Vcpu", pdone: int, done: int) -> None:
    if pdone:
        try:
            vcpu.mem.write(pdone, struct.pack("<I", done & 0xFFFFFFFF))
        except GuestFault:
            pass                # Xen ignores a failure to report progress


def normal_pt_update(dom: "Domain", ptr: int, val: int, preserve_ad: bool) -> None:
    """MMU_NORMAL_PT_UPDATE / MMU_PT_UPDATE_PRESERVE_AD on the entry at machine address ptr (Xen's
    do_mmu_update): an entry of a validated page table goes through mod_lN_entry; a frame of type writable
    (or one that can take that type) is plain memory and is written as is; anything else is -EINVAL."""
    frames = dom.frames
    mfn = ptr >> 12
    if not frames.owned_by(mfn, dom.domid):
        raise PageTypeError(-errno.EINVAL, f"mmu_update: mfn {mfn:#x} is not the domain's")
    index = (ptr & 0xFFF) >> 3
    if frames.lockable(mfn):
        t = frames.type[mfn]
        if PGT_l1 <= t <= PGT_l4:
            frames.update_entry(mfn, index, val, dom.domid, preserve_ad)
        elif t == PGT_writable:
            dom.mem.write_u64((mfn << 12) + index * 8, val)
        else:
            raise PageTypeError(-errno.EINVAL, f"mmu_update: mfn {mfn:#x} is a {TYPE_NAMES[t]} page")
        return
    # Not validated or not referenced: a plain write, allowed if the frame may be writable.
    frames.get_type(mfn, PGT_writable, dom.domid)
    dom.mem.write_u64((mfn << 12) + index * 8, val)
    frames.put_type(mfn)


def _batch(vcpu: "Vcpu", items: int, count: int, pdone: int, foreigndom: int, layout: struct.Struct,
           one: Callable[..., int]) -> int:
    """The loop mmu_update and mmuext_op share (Xen's do_mmu_update/do_mmuext_op): check the owner and the
    whole array, run the requests in order until one fails, flush the TLB, report how many were done."""
    count &= 0xFFFFFFFF
    count &= ~MMU_UPDATE_PREEMPTED
    _check_owner(vcpu, foreigndom)
    if not guest_range_ok(items, layout.size * count):
        return -errno.EFAULT
    rc = 0
    done = 0
    try:
        for done in range(count):
            try:
                fields = layout.unpack(vcpu.mem.read(items + layout.size * done, layout.size))
            except GuestFault:
                rc = -errno.EFAULT
                break
            try:
                rc = one(vcpu, *fields)
            except GuestFault:
                rc = -errno.EFAULT
            if rc:
                break
        else:
            done = count
    finally:
        vcpu.flush_tlb()
    _report_done(vcpu, pdone, done)
    return rc


def _one_mmu_update(vcpu: "Vcpu", ptr: int, val: int) -> int:
    dom = vcpu.domain
    cmd = ptr & 7
    try:
        if cmd in (MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_PRESERVE_AD):
            normal_pt_update(dom, ptr - cmd, val, cmd == MMU_PT_UPDATE_PRESERVE_AD)
        elif cmd == MMU_MACHPHYS_UPDATE:
            mfn = ptr >> 12
            if not dom.frames.owned_by(mfn, dom.domid):
                raise PageTypeError(-errno.EINVAL, f"machphys update of foreign mfn {mfn:#x}")
            dom.set_m2p(mfn, val)
        else:
            return -errno.ENOSYS
    except PageTypeError as e:
        dom.log_once(("mmu_update", str(e)), f"mmu_update refused: {e}")
        return e.err
    return 0


def mmu_update(vcpu: "Vcpu", ureqs: int, count: int, pdone: int, foreigndom: int) -> int:
    return _batch(vcpu, ureqs, count, pdone, foreigndom, _ENTRY, _one_mmu_update)


def switch_base(vcpu: "Vcpu", mfn: int, user: bool) -> None:
    """MMUEXT_NEW_BASEPTR (Xen's new_guest_cr3) and MMUEXT_NEW_USER_BASEPTR: take an L4 reference on the new
    table (validating it if need be), then drop the old one. The same table again changes nothing; a user
    base pointer of 0 means none. The read-only M2P slot follows VMASST_TYPE_m2p_strict (fill_ro_mpt for a
    kernel table without it, zap_ro_mpt for a user table with it)."""
    dom = vcpu.domain
    frames = dom.frames
    old = vcpu.guest_table_user if user else vcpu.guest_table
    if mfn == old:
        if not user and vcpu.kernel_mode:
            vcpu.load_cr3(mfn)           # write_ptbase: the same table, reloaded
        return
    if mfn or not user:
        frames.get_type(mfn, PGT_l4, dom.domid)
        if user and dom.m2p_strict:
            dom.xen.zap_ro_mpt(mfn)
        elif not user and not dom.m2p_strict:
            dom.xen.fill_ro_mpt(mfn)
    if user:
        vcpu.guest_table_user = mfn
    else:
        vcpu.guest_table = mfn
    if old:
        frames.put_type(old)
    if vcpu.kernel_mode and not user:
        vcpu.load_cr3(mfn)
    elif not vcpu.kernel_mode and user and mfn:
        vcpu.load_cr3(mfn)


def mmuext_op(vcpu: "Vcpu", uops: int, count: int, pdone: int, foreigndom: int) -> int:
    return _batch(vcpu, uops, count, pdone, foreigndom, _MMUEXT, _one_mmuext_logged)


def _one_mmuext_logged(vcpu: "Vcpu", cmd: int, arg1: int, arg2: int) -> int:
    try:
        return _one_mmuext(vcpu, cmd, arg1, arg2)
    except PageTypeError as e:
        vcpu.domain.log_once(("mmuext", cmd, str(e)), f"mmuext_op {MMUEXT_NAMES.get(cmd, cmd)} refused: {e}")
        return e.err


def _one_mmuext(vcpu: "Vcpu", cmd: int, arg1: int, arg2: int) -> int:
    dom = vcpu.domain
    frames = dom.frames
    if MMUEXT_PIN_L1_TABLE <= cmd <= MMUEXT_PIN_L4_TABLE:
        frames.pin(arg1, PGT_l1 + (cmd - MMUEXT_PIN_L1_TABLE), dom.domid)
        return 0
    if cmd == MMUEXT_UNPIN_TABLE:
        frames.unpin(arg1, dom.domid)
        return 0
    if cmd == MMUEXT_NEW_BASEPTR:
        switch_base(vcpu, arg1, user=False)
        return 0
    if cmd == MMUEXT_NEW_USER_BASEPTR:
        switch_base(vcpu, arg1, user=True)
        return 0
    if cmd in (MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_TLB_FLUSH_ALL, MMUEXT_INVLPG_LOCAL, MMUEXT_INVLPG_ALL):
        return 0                       # the flush after the batch covers it
    if cmd in (MMUEXT_TLB_FLUSH_MULTI, MMUEXT_INVLPG_MULTI):
        vcpu.mem.read(arg2, 8)         # the vCPU bitmap must be readable
        return 0
    if cmd in (MMUEXT_FLUSH_CACHE, MMUEXT_FLUSH_CACHE_GLOBAL):
        return -errno.EACCES           # needs I/O privileges
    if cmd == MMUEXT_SET_LDT:
        ents = arg2 & 0xFFFFFFFF
        if arg1 & 0xFFF or ents > 8192 or not guest_range_ok(arg1, ents * 8):
            return -errno.EINVAL
        vcpu.ldt = (arg1, ents)
        return 0
    if cmd == MMUEXT_CLEAR_PAGE:
        frames.get_type(arg1, PGT_writable, dom.domid)
        dom.mem.clear_frame(arg1)
        frames.put_type(arg1)
        return 0
    if cmd == MMUEXT_COPY_PAGE:
        # Xen's order: the source must be the domain's (a general reference), then the destination must be
        # the domain's and able to take a writable type reference; both failures are -EINVAL.
        src = arg2
        if not frames.owned_by(src, dom.domid):
            return -errno.EINVAL
        frames.get_type(arg1, PGT_writable, dom.domid)
        dom.mem.mv[arg1 << 12:(arg1 + 1) << 12] = dom.mem.mv[src << 12:(src + 1) << 12]
        frames.put_type(arg1)
        return 0
    return -errno.ENOSYS


def l1_entry_for(vcpu: "Vcpu", va: int) -> tuple[int, int]:
    """(L1 mfn, index) of the entry that maps va in the current page tables (Xen's map_guest_l1e, which
    reads the L2 entry through the linear page table: every level present, the L2 entry not a superpage)."""
    mem = vcpu.domain.mem
    table = vcpu.aspace.cr3 & PTE_ADDR_MASK
    for shift in (39, 30, 21):
        ma = table + ((va >> shift) & 511) * 8
        if ma + 8 > mem.size:
            raise PageTypeError(-errno.EINVAL, f"no L1 table maps {va:#x}")
        e = mem.read_u64(ma)
        if not e & _PAGE_PRESENT or (shift != 39 and e & _PAGE_PSE):
            raise PageTypeError(-errno.EINVAL, f"no L1 table maps {va:#x}")
        table = e & PTE_ADDR_MASK
    return table >> 12, (va >> 12) & 511


def _flush_for(vcpu: "Vcpu", flags: int) -> None:
    if flags & UVMF_FLUSHTYPE_MASK:
        bmap = flags & ~UVMF_FLUSHTYPE_MASK
        if bmap not in (UVMF_LOCAL, UVMF_ALL):
            vcpu.mem.read(bmap, 8)


def update_va_mapping_common(vcpu: "Vcpu", va: int, val: int, flags: int) -> int:
    """Xen's __do_update_va_mapping: mod_l1_entry on the L1 entry that maps va, which must sit in a validated
    L1 of the domain; a failed update skips the flush (and its vCPU-mask read)."""
    dom = vcpu.domain
    frames = dom.frames
    try:
        if not guest_range_ok(va, 1):
            raise PageTypeError(-errno.EINVAL, f"{va:#x} is not a guest address")
        l1, index = l1_entry_for(vcpu, va)
        if not frames.owned_by(l1, dom.domid) or not frames.lockable(l1) or frames.type[l1] != PGT_l1:
            raise PageTypeError(-errno.EINVAL, f"the table mapping {va:#x} is not an L1 of the domain")
        frames.update_entry(l1, index, val, dom.domid)
    except PageTypeError as e:
        dom.log_once(("uvm", str(e)), f"update_va_mapping refused: {e}")
        return e.err
    finally:
        vcpu.flush_tlb()
    try:
        _flush_for(vcpu, flags)
    except GuestFault:
        return -errno.EFAULT
    return 0


def update_va_mapping(vcpu: "Vcpu", va: int, val: int, flags: int) -> int:
    return update_va_mapping_common(vcpu, va, val, flags)


def update_va_mapping_otherdomain(vcpu: "Vcpu", va: int, val: int, flags: int, domid: int) -> int:
    if domid & 0xFFFF not in (DOMID_SELF, vcpu.domain.domid):
        return -errno.ESRCH
    return update_va_mapping_common(vcpu, va, val, flags)


def _vm_assist_enable(vcpu: "Vcpu", vtype: int) -> int:
    vcpu.domain.vm_assist |= 1 << vtype
    return 0


def _vm_assist_disable(vcpu: "Vcpu", vtype: int) -> int:
    vcpu.domain.vm_assist &= ~(1 << vtype)
    return 0


def vm_assist(vcpu: "Vcpu", cmd: int, vtype: int) -> int:
    cmd &= 0xFFFFFFFF
    vtype &= 0xFFFFFFFF
    if vtype not in VMASST_VALID_PV64:
        return -errno.EINVAL
    row = VM_ASSIST_SUBOPS.get(cmd)
    if row is None or row.handler is None:
        return -errno.ENOSYS
    return row.handler(vcpu, vtype)


# -- decoders -----------------------------------------------------------------------------------------------
_MMU_CMDS = {0: "normal", 1: "machphys", 2: "preserve_ad", 3: "no_translate"}


def _mmu_update_in(ctx: DecodeCtx) -> Decoded:
    ureqs, count, _, foreign = ctx.args[:4]
    count &= 0x7FFFFFFF
    reqs, total = ctx.array(ureqs, count, "<QQ")
    return put_list({"count": count, "foreigndom": domid(foreign & 0xFFFF)}, "reqs",
                    [{"cmd": _MMU_CMDS.get(p & 7, p & 7), "ptr": p & ~7, "val": v} for p, v in reqs], total)


def _pdone_out(ctx: DecodeCtx, ins: Decoded) -> Optional[Decoded]:
    pdone = ctx.args[2]
    return {"done": ctx.u32(pdone)} if pdone else None


def _mmuext_in(ctx: DecodeCtx) -> Decoded:
    uops, count, _, foreign = ctx.args[:4]
    count &= 0x7FFFFFFF
    ops, total = ctx.array(uops, count, "<I4xQQ")
    items = []
    for cmd, arg1, arg2 in ops:
        name = MMUEXT_NAMES.get(cmd, str(cmd))
        items.append({"cmd": name[len("MMUEXT_"):].lower() if name.startswith("MMUEXT_") else name,
                      "arg1": arg1, "arg2": arg2})
    return put_list({"count": count, "foreigndom": domid(foreign & 0xFFFF)}, "ops", items, total)


def _uvmf(flags: int) -> str:
    kind = {0: "none", UVMF_TLB_FLUSH: "tlb_flush", UVMF_INVLPG: "invlpg"}.get(flags & UVMF_FLUSHTYPE_MASK, "?")
    rest = flags & ~UVMF_FLUSHTYPE_MASK
    scope = "local" if rest == 0 else "all" if rest == UVMF_ALL else "multi"
    return f"{kind}|{scope}"


def _uvm_in(ctx: DecodeCtx) -> Decoded:
    va, val, flags = ctx.args[:3]
    return {"va": va, "val": val, "flags": _uvmf(flags)}


def _uvm_other_in(ctx: DecodeCtx) -> Decoded:
    va, val, flags, dom = ctx.args[:4]
    return {"va": va, "val": val, "flags": _uvmf(flags), "domid": domid(dom & 0xFFFF)}


def _vm_assist_in(ctx: DecodeCtx) -> Decoded:
    return {"type": ctx.args[1] & 0xFFFFFFFF}


VM_ASSIST_SUBOPS = SubOps((SubOp(VMASST_CMD_enable, "enable", _vm_assist_enable, decode_in=_vm_assist_in),
                           SubOp(VMASST_CMD_disable, "disable", _vm_assist_disable, decode_in=_vm_assist_in)))
HYPERCALLS = (
    Hypercall(HYPERVISOR_mmu_update, "mmu_update", mmu_update, 4, decode_in=_mmu_update_in,
              decode_out=_pdone_out, out_on_error=True),
    Hypercall(HYPERVISOR_mmuext_op, "mmuext_op", mmuext_op, 4, decode_in=_mmuext_in, decode_out=_pdone_out,
              out_on_error=True),
    Hypercall(HYPERVISOR_update_va_mapping, "update_va_mapping", update_va_mapping, 3, decode_in=_uvm_in),
    Hypercall(HYPERVISOR_update_va_mapping_otherdomain, "update_va_mapping_otherdomain",
              update_va_mapping_otherdomain, 4, decode_in=_uvm_other_in),
    Hypercall(HYPERVISOR_vm_assist, "vm_assist", vm_assist, 2, subop_arg=0, subops=VM_ASSIST_SUBOPS),
)
