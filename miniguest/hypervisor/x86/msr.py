"""MSR reads and writes of a PV guest (Xen: xen/arch/x86/msr.c, guest_rdmsr / guest_wrmsr).

Reached from the privileged-instruction emulator (pv/emul_priv_op.py) when a guest kernel's rdmsr/wrmsr
faults. An MSR Xen does not offer is refused (None / False): the caller injects #GP(0).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from miniguest.abi.arch_x86 import MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE, MSR_TSC_AUX
from miniguest.abi.arch_x86 import canonical
from miniguest.hypervisor.x86.cpu import EFER_GUEST

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

MSR_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_MISC_ENABLE = 0x1A0
MSR_PAT = 0x277
XEN_MSR_PAT = 0x050100070406        # Xen's PAT (WB, WT, UC-, UC, WC, WP, ...)
MISC_ENABLE_VALUE = (1 << 0) | (1 << 11) | (1 << 12)   # fast strings, BTS/PEBS unavailable
# CPUID faulting, which Xen offers a PV guest when the CPU has it (our Intel model does): enumerated in
# PLATFORM_INFO, switched in MISC_FEATURES_ENABLES; while on, cpuid from guest user mode takes #GP(0).
MSR_INTEL_PLATFORM_INFO = 0xCE
PLATFORM_INFO_CPUID_FAULTING = 1 << 31
MSR_INTEL_MISC_FEATURES_ENABLES = 0x140
MISC_FEATURES_CPUID_FAULTING = 1 << 0


def guest_rdmsr(vcpu: "Vcpu", msr: int) -> Optional[int]:
    """The value rdmsr returns, or None for #GP."""
    uc = vcpu.uc
    if msr == MSR_FS_BASE:
        return uc.msr_read(MSR_FS_BASE)
    if msr == MSR_GS_BASE:
        return uc.msr_read(MSR_GS_BASE)
    if msr == MSR_SHADOW_GS_BASE:
        return vcpu.gs_base_user
    if msr == MSR_EFER:
        return EFER_GUEST
    if msr == MSR_TSC:
        return vcpu.domain.tsc_of(vcpu.domain.clock.now_ns())
    if msr == MSR_PAT:
        return XEN_MSR_PAT
    if msr == MSR_MISC_ENABLE:
        return MISC_ENABLE_VALUE
    if msr == MSR_APIC_BASE:
        return 0xFEE00000 | (1 << 8)      # BSP, xAPIC disabled for PV
    if msr == MSR_TSC_AUX:
        return vcpu.id
    if msr == MSR_INTEL_PLATFORM_INFO:
        return PLATFORM_INFO_CPUID_FAULTING
    if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
        return MISC_FEATURES_CPUID_FAULTING if vcpu.cpuid_faulting else 0
    return None


def guest_wrmsr(vcpu: "Vcpu", msr: int, value: int) -> bool:
    """Apply a wrmsr; False for #GP."""
    uc = vcpu.uc
    if msr in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
        if not canonical(value):
            return False
        if msr == MSR_FS_BASE:
            uc.msr_write(MSR_FS_BASE, value)
        elif msr == MSR_GS_BASE:
            uc.msr_write(MSR_GS_BASE, value)
            vcpu.gs_base_kernel = value
        else:
            vcpu.gs_base_user = value
        return True
    if msr == MSR_EFER:
        return value == EFER_GUEST         # Xen lets a PV guest "write" only the value it sees
    if msr in (MSR_PAT, MSR_MISC_ENABLE):
        return value == guest_rdmsr(vcpu, msr)
    if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
        if value & ~MISC_FEATURES_CPUID_FAULTING:
            return False                   # reserved bits: #GP
        vcpu.cpuid_faulting = bool(value)
        return True
    return False
