"""#UD from a PV guest (Xen: xen/arch/x86/pv/emul-inv-op.c, pv_emulate_invalid_op).

Xen's forced-emulation prefix `ud2a; .ascii "xen"` followed by cpuid is emulated (the PV way to ask for
Xen's CPUID view from a guest kernel); every other invalid opcode is bounced to the guest's #UD handler.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from miniguest.abi.arch_x86 import TRAP_gp_fault, TRAP_invalid_op
from miniguest.hypervisor.pv.emul_priv_op import fetch_insn_bytes
from miniguest.hypervisor.x86.cpuid import emulate_cpuid

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

FORCED_EMULATION = b"\x0f\x0bxen"
CPUID = b"\x0f\xa2"


def emulate_invalid_op(vcpu: "Vcpu") -> None:
    """#UD, including Xen's forced-emulation prefix, which must be followed by cpuid."""
    rip = vcpu.rip
    code = fetch_insn_bytes(vcpu, rip, 7)
    if code[:5] == FORCED_EMULATION:
        if code[5:7] == CPUID and vcpu.cpuid_faulting and not vcpu.kernel_mode:
            # Xen's emulate_forced_invocation: #GP(0) in place of the #UD, at the cpuid itself.
            vcpu.inject_exception(TRAP_gp_fault, 0, rip + 5)
            vcpu.after_exception()
            return
        if code[5:7] == CPUID:
            emulate_cpuid(vcpu, via_ud=True)
            vcpu.set_rip(rip + 7)
            vcpu.after_exception()
            return
    vcpu.inject_exception(TRAP_invalid_op, None, rip)
    vcpu.after_exception()
