"""The small PV hypercalls (Xen: xen/arch/x86/pv/misc-hypercalls.c): stack_switch, set_segment_base,
fpu_taskswitch, and the debug registers: set_debugreg/get_debugreg, as hypercalls and for `mov %drN`
emulation (pv/emul_priv_op.py).

Debug registers: DR0-3 take any address a guest may name (below 2^47 or above Xen's range: else -EPERM),
DR6/DR7 keep their fixed bits and refuse the reserved upper half (-EINVAL), DR7.GD is privileged (-EPERM),
DR4/5 alias DR6/7 while CR4.DE is clear (-ENODEV when set). The values are the guest's view only:
breakpoints are not armed in the CPU model, so a DR7 that enables one is refused (-EPERM, #GP for `mov`)
rather than accepted and silently ignored.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from unicorn import x86_const as X

from miniguest.abi import errno
from miniguest.abi.arch_x86 import (FIRST_RESERVED_GDT_ENTRY, HYPERVISOR_VIRT_END, MSR_FS_BASE, MSR_GS_BASE,
                                    SEGBASE_FS, SEGBASE_GS_KERNEL, SEGBASE_GS_USER, SEGBASE_GS_USER_SEL, canonical)
from miniguest.abi.xen import (HYPERVISOR_fpu_taskswitch, HYPERVISOR_get_debugreg, HYPERVISOR_set_debugreg,
                               HYPERVISOR_set_segment_base, HYPERVISOR_stack_switch, HYPERVISOR_xenpmu_op)
from miniguest.hypervisor.decode import DecodeCtx, Decoded
from miniguest.hypervisor.hypercall import Hypercall, SubOp, SubOps
from miniguest.hypervisor.x86.cpu import CR4_DE, DR6_DEFAULT, DR7_DEFAULT

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu


def stack_switch(vcpu: "Vcpu", ss: int, sp: int) -> int:
    vcpu.kernel_ss = (ss & 0xFFFF) | 3
    vcpu.kernel_sp = sp
    return 0


def _fs(vcpu: "Vcpu", base: int) -> int:
    vcpu.uc.msr_write(MSR_FS_BASE, base)
    return 0


def _gs_user(vcpu: "Vcpu", base: int) -> int:
    vcpu.gs_base_user = base
    return 0


def _gs_kernel(vcpu: "Vcpu", base: int) -> int:
    vcpu.uc.msr_write(MSR_GS_BASE, base)
    vcpu.gs_base_kernel = base
    return 0


def _gs_user_sel(vcpu: "Vcpu", base: int) -> int:
    sel = base & 0xFFFF
    if sel & ~3 and not _selector_ok(vcpu, sel):
        return -errno.EINVAL
    vcpu.gs_sel_user = sel | 3 if sel & ~3 else 0
    vcpu.gs_base_user = 0
    return 0


def set_segment_base(vcpu: "Vcpu", which: int, base: int) -> int:
    row = SEGBASE_SUBOPS.get(which & 0xFFFFFFFF)
    if row is None or row.handler is None or (which & 0xFFFFFFFF != SEGBASE_GS_USER_SEL and not canonical(base)):
        return -errno.EINVAL
    return row.handler(vcpu, base)


def _selector_ok(vcpu: "Vcpu", sel: int) -> bool:
    index = sel >> 3
    return bool(sel & 4) or index < vcpu.gdt_ents or index >= FIRST_RESERVED_GDT_ENTRY


def fpu_taskswitch(vcpu: "Vcpu", set_ts: int) -> int:
    cr0 = vcpu.uc.reg_read(X.UC_X86_REG_CR0)
    vcpu.cr0_ts = bool(set_ts)
    vcpu.uc.reg_write(X.UC_X86_REG_CR0, cr0 | 8 if set_ts else cr0 & ~8)
    return 0


# -- debug registers --------------------------------------------------------------------------------------
def _dr_alias(vcpu: "Vcpu", dr: int) -> Optional[int]:
    if dr in (4, 5):
        return None if vcpu.cr4_ctl & CR4_DE else dr + 2
    return dr if dr < 8 else None


def get_debugreg(vcpu: "Vcpu", dr: int) -> Optional[int]:
    """The value of %drN, or None (#GP / -EINVAL)."""
    dr = _dr_alias(vcpu, dr)
    return None if dr is None else vcpu.debugreg[dr]


def set_debugreg(vcpu: "Vcpu", dr: int, value: int) -> bool:
    """Set %drN from a `mov`; False when Xen refuses the value (#GP)."""
    return set_debugreg_errno(vcpu, dr, value) == 0


DR7_GD = 1 << 13
DR7_ACTIVE_MASK = 0xFF


def set_debugreg_errno(vcpu: "Vcpu", dr: int, value: int) -> int:
    """Xen's set_debugreg: 0, or the negative errno of its refusal."""
    regs = vcpu.debugreg
    if dr < 4:
        if not (value < (1 << 47) or value >= HYPERVISOR_VIRT_END):
            return -errno.EPERM
        regs[dr] = value
        if regs[7] & DR7_ACTIVE_MASK:
            vcpu.hw_bp.changed()
        return 0
    if dr in (4, 5) and vcpu.cr4_ctl & CR4_DE:
        return -errno.ENODEV
    if dr in (4, 6):
        if value >> 32:
            return -errno.EINVAL
        regs[6] = (value & 0x0000E00F) | DR6_DEFAULT      # B0-3, BD, BS, BT; the rest reads as 1s/0s
        return 0
    if dr in (5, 7):
        if value >> 32:
            return -errno.EINVAL
        if value & DR7_GD:
            return -errno.EPERM
        if value & DR7_ACTIVE_MASK:
            for i in range(4):
                if (value >> (16 + 4 * i)) & 3 == 2 and not vcpu.cr4_ctl & CR4_DE:
                    return -errno.EPERM                   # an I/O breakpoint needs CR4.DE
        was_active = regs[7] & DR7_ACTIVE_MASK
        regs[7] = (value & 0xFFFF27FF & ~DR7_GD) | DR7_DEFAULT
        if was_active or regs[7] & DR7_ACTIVE_MASK:
            vcpu.hw_bp.changed()                          # armed as hooks (x86/hw_breakpoints.py)
        return 0
    return -errno.ENODEV


def do_set_debugreg(vcpu: "Vcpu", reg: int, value: int) -> int:
    return set_debugreg_errno(vcpu, reg & 0xFFFFFFFF, value)


def do_get_debugreg(vcpu: "Vcpu", reg: int) -> int:
    value = get_debugreg(vcpu, reg & 0xFFFFFFFF)
    return -errno.ENODEV if value is None else value


def do_xenpmu_op(vcpu: "Vcpu", op: int, arg: int) -> int:
    """Xen's do_xenpmu_op with the vPMU off (its default, vpmu=0): -EOPNOTSUPP for every operation."""
    return -errno.EOPNOTSUPP


# -- decoders and the table -----------------------------------------------------------------------------------
def _stack_switch_in(ctx: DecodeCtx) -> Decoded:
    return {"ss": ctx.args[0] & 0xFFFF, "sp": ctx.args[1]}


def _segbase_in(ctx: DecodeCtx) -> Decoded:
    return {"base": ctx.args[1]}


def _fpu_in(ctx: DecodeCtx) -> Decoded:
    return {"set_ts": int(bool(ctx.args[0]))}


SEGBASE_SUBOPS = SubOps((SubOp(SEGBASE_FS, "fs", _fs, decode_in=_segbase_in),
                         SubOp(SEGBASE_GS_USER, "gs_user", _gs_user, decode_in=_segbase_in),
                         SubOp(SEGBASE_GS_KERNEL, "gs_kernel", _gs_kernel, decode_in=_segbase_in),
                         SubOp(SEGBASE_GS_USER_SEL, "gs_user_sel", _gs_user_sel, decode_in=_segbase_in)))
HYPERCALLS = (
    Hypercall(HYPERVISOR_stack_switch, "stack_switch", stack_switch, 2, decode_in=_stack_switch_in),
    Hypercall(HYPERVISOR_set_segment_base, "set_segment_base", set_segment_base, 2, subop_arg=0,
              subops=SEGBASE_SUBOPS),
    Hypercall(HYPERVISOR_fpu_taskswitch, "fpu_taskswitch", fpu_taskswitch, 1, decode_in=_fpu_in),
    Hypercall(HYPERVISOR_set_debugreg, "set_debugreg", do_set_debugreg, 2),
    Hypercall(HYPERVISOR_get_debugreg, "get_debugreg", do_get_debugreg, 1),
    Hypercall(HYPERVISOR_xenpmu_op, "xenpmu_op", do_xenpmu_op, 2),
)
