"""Debug registers of a PV guest (Xen: xen/arch/x86/pv/misc-hypercalls.c, set_debugreg/get_debugreg).

DR0-3 take any address a guest may name (below 2^47 or above Xen's range), DR6/DR7 keep their fixed bits,
DR4/5 alias DR6/7 while CR4.DE is clear. The values are the guest's view only: breakpoints are not armed in
the CPU model, so a DR7 that enables one is refused (#GP) rather than accepted and silently ignored.
Reached from `mov %drN` emulation (pv/emul_priv_op.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from miniguest.abi.arch_x86 import HYPERVISOR_VIRT_END
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
    """Set %drN; False when Xen refuses the value (#GP / -EPERM)."""
    dr = _dr_alias(vcpu, dr)
    if dr is None:
        return False
    regs = vcpu.debugreg
    if dr < 4:
        if not (value < (1 << 47) or value >= HYPERVISOR_VIRT_END):
            return False
        regs[dr] = value
    elif dr == 6:
        regs[6] = (value & 0x0000E00F) | DR6_DEFAULT      # B0-3, BD, BS, BT; the rest reads as 1s/0s
    elif dr == 7:
        if value & 0xFF or value >> 32:                   # L0-3/G0-3 would arm a breakpoint: not modelled
            return False
        regs[7] = (value & 0xFFFF2700) | DR7_DEFAULT
    else:
        return False
    return True
