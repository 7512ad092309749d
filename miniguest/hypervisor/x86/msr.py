"""MSR reads and writes of a PV guest (Xen: xen/arch/x86/msr.c, guest_rdmsr / guest_wrmsr).

Reached from the privileged-instruction emulator (pv/emul_priv_op.py) when a guest kernel's rdmsr/wrmsr
faults. An MSR Xen does not offer is refused (None / False): the caller injects #GP(0).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from miniguest.abi.arch_x86 import MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE, MSR_TSC_AUX
from miniguest.abi.arch_x86 import canonical
from miniguest.hypervisor.x86.cpu import EFER_GUEST
from miniguest.hypervisor.x86.cpuid import arch_capabilities, has

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

MSR_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_MISC_ENABLE = 0x1A0
MSR_PAT = 0x277
XEN_MSR_PAT = 0x050100070406        # Xen's PAT (WB, WT, UC-, UC, WC, WP, ...)
# guest_misc_enable(): the CPU's value without PERF_AVAIL/MONITOR_ENABLE, with BTS and PEBS unavailable and
# xTPR disabled. The CPU's own value is fast strings on (QEMU's MSR_IA32_MISC_ENABLE_DEFAULT; Unicorn's MSR
# reads 0 because its reset skips it, but the model executes fast strings).
MISC_ENABLE_VALUE = (1 << 0) | (1 << 11) | (1 << 12) | (1 << 23)
MSR_IA32_PLATFORM_ID = 0x17
MSR_IA32_FEATURE_CONTROL = 0x3A
FEATURE_CONTROL_LOCK = 1 << 0
MSR_IA32_UCODE_REV = 0x8B           # MSR_AMD_PATCHLEVEL too
UCODE_REV = 0x100000000             # what the CPU model reports (Xen forwards its last microcode load)
MSR_ARCH_CAPABILITIES = 0x10A
MSR_IA32_PERF_STATUS = 0x198
MSR_IA32_PERF_CTL = 0x199
MSR_IA32_THERM_STATUS = 0x19C
MSR_IA32_PERF_CAPABILITIES = 0x345
APIC_BASE_BSP = 1 << 8
APIC_BASE_ENABLE = 1 << 11
APIC_DEFAULT_PHYS_BASE = 0xFEE00000
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
        # "Linux PV guests will attempt to read APIC_BASE" (emul-priv-op.c read_msr).
        return APIC_DEFAULT_PHYS_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if vcpu.id == 0 else 0)
    if msr == MSR_IA32_UCODE_REV:
        return UCODE_REV
    if msr == MSR_ARCH_CAPABILITIES:
        return arch_capabilities() if has("ARCH_CAPS") else None
    if msr == MSR_IA32_PLATFORM_ID:
        return 0
    if msr == MSR_IA32_FEATURE_CONTROL:
        return FEATURE_CONTROL_LOCK         # no VMX, no LMCE for a PV guest
    if msr in (MSR_IA32_PERF_STATUS, MSR_IA32_PERF_CTL, MSR_IA32_THERM_STATUS, MSR_IA32_PERF_CAPABILITIES):
        return 0                            # read-as-zero (not a cpufreq controller)
    if msr == MSR_TSC_AUX:
        return vcpu.tsc_aux if has("RDTSCP") or has("RDPID") else None
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
    if msr == MSR_TSC_AUX:
        if not (has("RDTSCP") or has("RDPID")) or value >> 32:
            return False
        vcpu.tsc_aux = value
        return True
    if msr == MSR_MISC_ENABLE:
        return True                        # Xen ignores a changed value ("invalid" is logged, no #GP)
    if msr == MSR_IA32_UCODE_REV:
        return value == 0                  # Intel: write 0 before reading the revision; anything else #GP
    if msr in (MSR_IA32_PERF_CTL,):
        return True                        # not a cpufreq controller: dropped
    if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
        if value & ~MISC_FEATURES_CPUID_FAULTING:
            return False                   # reserved bits: #GP
        vcpu.cpuid_faulting = bool(value)
        return True
    return False
