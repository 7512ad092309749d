"""The CPUID a PV guest sees (Xen: xen/arch/x86/cpu-policy.c builds the policies, cpuid.c's guest_cpuid
answers a leaf from the domain's policy).

The CPU model is Unicorn's emulated CPU, identical on every host; the PV policy is that CPU masked the way
Xen masks a PV guest's view, plus Xen's own leaves at 0x40000000 (hypervisor signature, version, hypercall
page, TSC). Host-independent, so runs stay reproducible.
"""
from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from miniguest.hypervisor.common.kernel import XEN_MAJOR, XEN_MINOR

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

Leaf = tuple[int, int, int, int]            # eax, ebx, ecx, edx
Policy = dict[tuple[int, int], Leaf]        # (leaf, subleaf) -> registers

XEN_CPUID_BASE = 0x40000000
XEN_CPUID_MAX_LEAF = 5
SUBLEAF_LEAVES = frozenset((4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18))


@cache
def host_policy() -> Policy:
    """CPUID of Unicorn's emulated CPU (the "host" the guest runs on), computed once per process."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, b"\x0f\xa2\xf4")
    policy: Policy = {}

    def raw(leaf: int, sub: int) -> Leaf:
        uc.reg_write(X.UC_X86_REG_RAX, leaf)
        uc.reg_write(X.UC_X86_REG_RCX, sub)
        uc.emu_start(0, 2)
        return tuple(uc.reg_read(r) & 0xFFFFFFFF for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX,
                                                            X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))  # type: ignore

    for base in (0, 0x80000000):
        top = raw(base, 0)[0]
        top = min(top, base + 0x20)
        for leaf in range(base, top + 1):
            for sub in (range(0, 4) if leaf in SUBLEAF_LEAVES else (0,)):
                policy[(leaf, sub)] = raw(leaf, sub)
    return policy


@cache
def pv_policy() -> Policy:
    """The host policy masked the way Xen masks a PV guest's view (Xen's pv_max_policy)."""
    policy = dict(host_policy())
    a, b, c, d = policy.get((1, 0), (0, 0, 0, 0))
    c &= ~((1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 21) | (1 << 24))  # MONITOR VMX SMX EIST TM2 x2APIC TSC-deadline
    c |= 1 << 31                                                                           # hypervisor
    d &= ~((1 << 12) | (1 << 22) | (1 << 29) | (1 << 31))                                  # MTRR ACPI TM PBE
    b &= 0x0000FFFF                                                                        # APIC id 0
    policy[(1, 0)] = (a, b, c, d)
    if (7, 0) in policy:
        # FSGSBASE hidden: Unicorn's wr{fs,gs}base skips the non-canonical #GP Xen's guests rely on.
        a, b, c, d = policy[(7, 0)]
        policy[(7, 0)] = (a, b & ~1, c, d)
    return policy


def xen_leaf(vcpu: "Vcpu", leaf: int, sub: int) -> Leaf:
    """Xen's leaves (cpuid_hypervisor_leaves)."""
    idx = leaf - XEN_CPUID_BASE
    if idx == 0:
        return (XEN_CPUID_BASE + XEN_CPUID_MAX_LEAF, 0x566E6558, 0x65584D4D, 0x4D4D566E)  # "XenVMMXenVMM"
    if idx == 1:
        return ((XEN_MAJOR << 16) | XEN_MINOR, 0, 0, 0)
    if idx == 2:
        return (1, 0x40000000, 0, 0)            # one hypercall page; MSR to place it (HVM only)
    if idx == 3:
        if sub == 0:
            return (0, 0, 1_000_000, 0)         # TSC mode native, 1 GHz guest TSC (kHz)
        if sub == 2:
            return (1_000_000, 0, 0, 0)
        return (0, 0, 0, 0)
    return (0, 0, 0, 0)


def guest_cpuid(vcpu: "Vcpu", leaf: int, sub: int) -> Leaf:
    """What `cpuid` with eax=leaf, ecx=sub returns to this vCPU."""
    if XEN_CPUID_BASE <= leaf <= XEN_CPUID_BASE + XEN_CPUID_MAX_LEAF:
        return xen_leaf(vcpu, leaf, sub)
    key = (leaf, sub if leaf in SUBLEAF_LEAVES else 0)
    regs = pv_policy().get(key, (0, 0, 0, 0))
    if leaf == 1:
        a, b, c, d = regs
        regs = (a, b | (vcpu.id << 24), c, d)
    return regs


def emulate_cpuid(vcpu: "Vcpu") -> None:
    """Complete a cpuid: eax/ecx in, eax/ebx/ecx/edx out (the caller moves rip on)."""
    uc = vcpu.uc
    leaf = uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
    sub = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
    regs = guest_cpuid(vcpu, leaf, sub)
    for r, v in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX), regs):
        uc.reg_write(r, v)
