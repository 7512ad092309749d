"""XSAVE state of a PV vCPU (Xen: xen/arch/x86/xstate.c).

XCR0 is per vCPU. Until the guest sets it, the CPU runs with x87|SSE (Xen loads `xcr0 ?: XSTATE_FP_SSE` on
context switch), and Xen's own CR4.OSXSAVE is always on, so xgetbv and xsave work for a PV guest even before
it sets its virtual CR4.OSXSAVE. `xsetbv` faults at CPL3 and is emulated (pv/emul_priv_op.py): XCR0 is the
only register, the value must stay within the policy's XCR0 mask and be architecturally valid (valid_xcr0),
else #GP(0).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from miniguest.hypervisor.unicorn_x86 import write_xcr0
from miniguest.hypervisor.x86.cpuid import pv_policy

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

XCR_XFEATURE_ENABLED_MASK = 0
XSTATE_FP_SSE = 0x3
X87, SSE, YMM = 1 << 0, 1 << 1, 1 << 2
BNDREGS, BNDCSR = 1 << 3, 1 << 4
OPMASK, ZMM, HI_ZMM = 1 << 5, 1 << 6, 1 << 7
TILE_CFG, TILE_DATA = 1 << 17, 1 << 18


def xcr0_max() -> int:
    """cpu_policy_xcr0_max: the XCR0 bits the domain's CPUID policy offers (leaf 0xd.0 eax/edx)."""
    a, _, _, d = pv_policy().get((0xD, 0), (0, 0, 0, 0))
    return d << 32 | a


def valid_xcr0(xcr0: int) -> bool:
    if not xcr0 & X87:
        return False
    if xcr0 & YMM and not xcr0 & SSE:
        return False
    avx512 = OPMASK | ZMM | HI_ZMM
    if xcr0 & avx512 and (not xcr0 & YMM or ~xcr0 & avx512):
        return False
    if bool(xcr0 & BNDREGS) != bool(xcr0 & BNDCSR):
        return False
    if bool(xcr0 & TILE_CFG) != bool(xcr0 & TILE_DATA):
        return False
    return True


def handle_xsetbv(vcpu: "Vcpu", index: int, value: int) -> bool:
    """xsetbv from the guest kernel; False for #GP(0)."""
    if index != XCR_XFEATURE_ENABLED_MASK:
        return False
    if value & ~xcr0_max() or not valid_xcr0(value):
        return False
    vcpu.xcr0 = value
    write_xcr0(vcpu.uc, value)
    return True


def load_xcr0(vcpu: "Vcpu") -> None:
    """Put the vCPU's XCR0 in the CPU (xcr0 ?: XSTATE_FP_SSE), e.g. after a restore."""
    write_xcr0(vcpu.uc, vcpu.xcr0 or XSTATE_FP_SSE)
