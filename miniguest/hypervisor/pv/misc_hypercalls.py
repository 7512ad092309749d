"""Debug registers of a PV guest (Xen: xen/arch/x86/pv/misc-hypercalls.c, set_debugreg/get_debugreg, and
the hypercalls of the same names).

DR0-3 take any address a guest may name (below 2^47 or above Xen's range: else -EPERM), DR6/DR7 keep their
fixed bits and refuse the reserved upper half (-EINVAL), DR7.GD is privileged (-EPERM), DR4/5 alias DR6/7
while CR4.DE is clear (-ENODEV when set). The values are the guest's view only: breakpoints are not armed in
the CPU model, so a DR7 that enables one is refused (-EPERM, #GP for `mov`) rather than accepted and
silently ignored. Reached from `mov %drN` emulation (pv/emul_priv_op.py) and HYPERVISOR_{set,get}_debugreg.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from miniguest.abi import errno
from miniguest.abi.arch_x86 import HYPERVISOR_VIRT_END
from miniguest.abi.xen import HYPERVISOR_get_debugreg, HYPERVISOR_set_debugreg, HYPERVISOR_xenpmu_op
from miniguest.hypervisor.hypercall import hypercall
from miniguest.hypervisor.vcpu import CR4_DE, DR6_DEFAULT, DR7_DEFAULT

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu


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
            return -errno.EPERM                           # would arm a breakpoint: not modelled
        regs[7] = (value & 0xFFFF2700 & ~DR7_GD) | DR7_DEFAULT
        return 0
    return -errno.ENODEV


@hypercall(HYPERVISOR_set_debugreg, 2)
def do_set_debugreg(vcpu: "Vcpu", reg: int, value: int) -> int:
    return set_debugreg_errno(vcpu, reg & 0xFFFFFFFF, value)


@hypercall(HYPERVISOR_get_debugreg, 1)
def do_get_debugreg(vcpu: "Vcpu", reg: int) -> int:
    value = get_debugreg(vcpu, reg & 0xFFFFFFFF)
    return -errno.ENODEV if value is None else value


@hypercall(HYPERVISOR_xenpmu_op, 2)
def do_xenpmu_op(vcpu: "Vcpu", op: int, arg: int) -> int:
    """Xen's do_xenpmu_op with the vPMU off (its default, vpmu=0): -EOPNOTSUPP for every operation."""
    return -errno.EOPNOTSUPP
