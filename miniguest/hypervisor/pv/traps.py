"""Trap and callback hypercalls: set_trap_table, set_callbacks, callback_op, iret, stack_switch,
set_segment_base, fpu_taskswitch, set_gdt, update_descriptor; and the trap-table entries the CPU reaches
without an exception: software interrupts (`int N`) and SYSENTER."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from unicorn import x86_const as X

from miniguest.abi import errno
from miniguest.abi.arch_x86 import (FIRST_RESERVED_GDT_ENTRY, FLAT_USER_SS64, MSR_FS_BASE, MSR_GS_BASE,
                                    SEGBASE_FS, SEGBASE_GS_KERNEL, SEGBASE_GS_USER, SEGBASE_GS_USER_SEL,
                                    TI_MASK_EVENTS, TRAP_gp_fault, VGCF_in_syscall, canonical)
from miniguest.abi.callback import (CALLBACKF_mask_events, CALLBACKOP_register, CALLBACKOP_unregister,
                                    CALLBACKTYPE_event, CALLBACKTYPE_failsafe, CALLBACKTYPE_nmi,
                                    CALLBACKTYPE_syscall, CALLBACKTYPE_syscall32, CALLBACKTYPE_sysenter)
from miniguest.abi.xen import (HYPERVISOR_callback_op, HYPERVISOR_fpu_taskswitch, HYPERVISOR_iret,
                               HYPERVISOR_set_callbacks, HYPERVISOR_set_gdt, HYPERVISOR_set_segment_base,
                               HYPERVISOR_set_trap_table, HYPERVISOR_stack_switch, HYPERVISOR_update_descriptor,
                               VMASST_TYPE_architectural_iopl)
from miniguest.hypervisor.hypercall import UnknownSubop, hypercall
from miniguest.hypervisor.ram import GuestFault
from miniguest.hypervisor.x86.page_types import PGT_seg_desc, PGT_writable, PageTypeError
from miniguest.hypervisor.vcpu import EFLAGS_IF, EFLAGS_IOPL, EFLAGS_VM, GuestCrash, TrapEntry

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

_TRAP = struct.Struct("<BBH4xQ")
_IRET = struct.Struct("<9Q")


@hypercall(HYPERVISOR_set_trap_table, 1)
def set_trap_table(vcpu: "Vcpu", traps: int) -> int:
    """Install entries until one with address 0; a NULL table clears every vector."""
    table = vcpu.trap_table
    if traps == 0:
        for i in range(256):
            table[i] = TrapEntry()
        return 0
    while True:
        vector, flags, cs, address = _TRAP.unpack(vcpu.mem.read(traps, 16))
        if address == 0:
            return 0
        if not canonical(address):
            return -errno.EINVAL
        table[vector] = TrapEntry(flags, cs | 3, address)
        traps += 16


def register_callback(vcpu: "Vcpu", ctype: int, flags: int, address: int) -> int:
    if not canonical(address):
        return -errno.EINVAL
    mask = bool(flags & CALLBACKF_mask_events)
    if ctype == CALLBACKTYPE_event:
        vcpu.event_callback = address
    elif ctype == CALLBACKTYPE_failsafe:
        vcpu.failsafe_callback = address
        vcpu.failsafe_mask_events = mask
    elif ctype == CALLBACKTYPE_syscall:
        vcpu.syscall_callback = address
        vcpu.syscall_mask_events = mask
    elif ctype in (CALLBACKTYPE_syscall32, CALLBACKTYPE_sysenter):
        vcpu.compat_callbacks[ctype] = (address, mask)
    elif ctype == CALLBACKTYPE_nmi:
        vcpu.nmi_callback = address
    else:
        return -errno.ENOSYS
    return 0


@hypercall(HYPERVISOR_set_callbacks, 3)
def set_callbacks(vcpu: "Vcpu", event: int, failsafe: int, syscall: int) -> int:
    for ctype, addr in ((CALLBACKTYPE_event, event), (CALLBACKTYPE_failsafe, failsafe),
                        (CALLBACKTYPE_syscall, syscall)):
        register_callback(vcpu, ctype, 0, addr)
    return 0


@hypercall(HYPERVISOR_callback_op, 2, subop_arg=0,
           subop_names={CALLBACKOP_register: "register", CALLBACKOP_unregister: "unregister"})
def callback_op(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    cmd &= 0xFFFFFFFF
    if cmd == CALLBACKOP_register:
        ctype, flags, address = struct.unpack("<HH4xQ", vcpu.mem.read(arg, 16))
        return register_callback(vcpu, ctype, flags, address)
    if cmd == CALLBACKOP_unregister:
        ctype = struct.unpack("<H", vcpu.mem.read(arg, 2))[0]
        if ctype == CALLBACKTYPE_nmi:
            vcpu.nmi_callback = 0
            return 0
        if ctype in (CALLBACKTYPE_event, CALLBACKTYPE_failsafe, CALLBACKTYPE_syscall,
                     CALLBACKTYPE_syscall32, CALLBACKTYPE_sysenter):
            return -errno.EINVAL       # Xen only lets the NMI callback be unregistered
        return -errno.ENOSYS
    raise UnknownSubop(cmd)


@hypercall(HYPERVISOR_iret, 0)
def iret(vcpu: "Vcpu") -> Optional[int]:
    """Pop Xen's iret frame {rax, r11, rcx, flags, rip, cs, rflags, rsp, ss} from the guest stack."""
    rsp = vcpu.uc.reg_read(X.UC_X86_REG_RSP)
    try:
        rax, r11, rcx, flags, rip, cs, rflags, new_rsp, ss = _IRET.unpack(vcpu.mem.read(rsp, 72))
    except GuestFault:
        raise GuestCrash(f"HYPERVISOR_iret: cannot read the iret frame at {rsp:#x}") from None
    if cs & 3 == 3 and vcpu.kernel_mode:
        if not vcpu.guest_table_user:
            raise GuestCrash("HYPERVISOR_iret to user mode with no user page tables")
        vcpu.toggle_guest_mode()
    uc = vcpu.uc
    if vcpu.domain.vm_assist & (1 << VMASST_TYPE_architectural_iopl):
        vcpu.iopl = (rflags & EFLAGS_IOPL) >> 12    # the virtual IOPL follows the frame (Xen's do_iret)
    vcpu.set_rip(rip)
    uc.reg_write(X.UC_X86_REG_EFLAGS, (rflags & ~(EFLAGS_IOPL | EFLAGS_VM)) | EFLAGS_IF | 2)
    uc.reg_write(X.UC_X86_REG_RSP, new_rsp)
    if not flags & VGCF_in_syscall:
        uc.reg_write(X.UC_X86_REG_R11, r11)
        uc.reg_write(X.UC_X86_REG_RCX, rcx)
    uc.reg_write(X.UC_X86_REG_RAX, rax)
    vcpu.upcall_mask = 0 if rflags & EFLAGS_IF else 1
    return None


@hypercall(HYPERVISOR_stack_switch, 2)
def stack_switch(vcpu: "Vcpu", ss: int, sp: int) -> int:
    vcpu.kernel_ss = (ss & 0xFFFF) | 3
    vcpu.kernel_sp = sp
    return 0


@hypercall(HYPERVISOR_set_segment_base, 2, subop_arg=0, subop_names={
    SEGBASE_FS: "fs", SEGBASE_GS_USER: "gs_user", SEGBASE_GS_KERNEL: "gs_kernel", SEGBASE_GS_USER_SEL: "gs_user_sel"})
def set_segment_base(vcpu: "Vcpu", which: int, base: int) -> int:
    uc = vcpu.uc
    which &= 0xFFFFFFFF
    if which == SEGBASE_GS_USER_SEL:
        sel = base & 0xFFFF
        if sel & ~3 and not _selector_ok(vcpu, sel):
            return -errno.EINVAL
        vcpu.gs_sel_user = sel | 3 if sel & ~3 else 0
        vcpu.gs_base_user = 0
        return 0
    if not canonical(base):
        return -errno.EINVAL
    if which == SEGBASE_FS:
        uc.msr_write(MSR_FS_BASE, base)
    elif which == SEGBASE_GS_USER:
        vcpu.gs_base_user = base
    elif which == SEGBASE_GS_KERNEL:
        uc.msr_write(MSR_GS_BASE, base)
        vcpu.gs_base_kernel = base
    else:
        return -errno.EINVAL
    return 0


def _selector_ok(vcpu: "Vcpu", sel: int) -> bool:
    index = sel >> 3
    return bool(sel & 4) or index < vcpu.gdt_ents or index >= FIRST_RESERVED_GDT_ENTRY


@hypercall(HYPERVISOR_fpu_taskswitch, 1)
def fpu_taskswitch(vcpu: "Vcpu", set_ts: int) -> int:
    cr0 = vcpu.uc.reg_read(X.UC_X86_REG_CR0)
    vcpu.cr0_ts = bool(set_ts)
    vcpu.uc.reg_write(X.UC_X86_REG_CR0, cr0 | 8 if set_ts else cr0 & ~8)
    return 0


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


@hypercall(HYPERVISOR_set_gdt, 2)
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


@hypercall(HYPERVISOR_update_descriptor, 2)
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


# -- trap-table entries reached without a CPU exception -------------------------------------------------
def software_interrupt(vcpu: "Vcpu", vector: int, rip_after: int) -> None:
    """`int N`, `int3`: deliver vector N if the trap table allows it from this mode, else #GP((N<<3)|2)."""
    ti = vcpu.trap_table[vector]
    dpl = ti.flags & 3
    needed = 1 if vcpu.kernel_mode else 3
    if vector in (3, 4) or dpl >= needed:
        vcpu.domain.trace_exception(vcpu, vector, None, rip_after, None, software=True)
        if not ti.address:
            raise GuestCrash(f"software interrupt {vector} with no handler in the trap table")
        vcpu.bounce(ti.address, None, bool(ti.flags & TI_MASK_EVENTS), rip_after)
        return
    vcpu.inject_exception(TRAP_gp_fault, (vector << 3) | 2, rip_after - 2)


def sysenter_entry(vcpu: "Vcpu") -> None:
    """SYSENTER from a 64-bit PV guest (an Intel CPU: AMD has none in long mode). Xen's sysenter_entry
    records a frame with rip 0, a null cs with RPL 3, rsp 0 and FLAT_USER_SS (the guest's registers stay
    as the SYSEXIT convention leaves them), then bounces to the sysenter callback, or to the #GP handler
    with error code 0 when none is registered. From guest kernel mode the frame would be built at that
    %rsp 0: Xen crashes the domain."""
    if vcpu.kernel_mode:
        raise GuestCrash("sysenter in guest kernel mode (Xen would build the bounce frame at %rsp 0)")
    frame = (0, 3, 0, FLAT_USER_SS64)
    address, mask = vcpu.compat_callbacks.get(CALLBACKTYPE_sysenter, (0, False))
    if address:
        vcpu.bounce(address, None, mask, frame=frame)
    else:
        ti = vcpu.trap_table[TRAP_gp_fault]
        vcpu.domain.trace_exception(vcpu, TRAP_gp_fault, 0, 0, None)
        if not ti.address:
            raise GuestCrash("sysenter with no sysenter callback and no #GP handler")
        vcpu.bounce(ti.address, 0, bool(ti.flags & TI_MASK_EVENTS), frame=frame)
    vcpu.deliver_events()
