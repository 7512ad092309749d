"""HYPERVISOR_iret: a PV guest's return from an exception or event frame (Xen: xen/arch/x86/pv/iret.c)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from unicorn import x86_const as X

from miniguest.abi.arch_x86 import VGCF_in_syscall
from miniguest.abi.xen import HYPERVISOR_iret, VMASST_TYPE_architectural_iopl
from miniguest.hypervisor.crash import GuestCrash
from miniguest.hypervisor.decode import DecodeCtx, Decoded
from miniguest.hypervisor.hypercall import Hypercall
from miniguest.hypervisor.ram import GuestFault
from miniguest.hypervisor.x86.cpu import EFLAGS_IF, EFLAGS_IOPL, EFLAGS_VM

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

_IRET = struct.Struct("<9Q")


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


def _iret_in(ctx: DecodeCtx) -> Decoded:
    rsp = ctx.vcpu.uc.reg_read(X.UC_X86_REG_RSP)
    rax, r11, rcx, flags, rip, cs, rflags, sp, ss = ctx.unpack("<9Q", rsp)
    return {"rip": rip, "to": ctx.symbol(rip), "cs": cs, "rflags": rflags, "rsp": sp, "ss": ss, "flags": flags}


HYPERCALLS = (Hypercall(HYPERVISOR_iret, "iret", iret, 0, decode_in=_iret_in),)
