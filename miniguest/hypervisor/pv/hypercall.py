"""The 64-bit PV hypercall table (Xen: xen/arch/x86/pv/hypercall.c, pv_hypercall_table): the families'
HYPERCALLS, assembled once, read-only. A domain dispatches through `Domain.hypercalls`.
"""
from __future__ import annotations

from miniguest.abi.xen import (HYPERVISOR_argo_op, HYPERVISOR_dm_op, HYPERVISOR_hvm_op, HYPERVISOR_hypfs_op,
                               HYPERVISOR_kexec_op, HYPERVISOR_nmi_op, HYPERVISOR_platform_op, HYPERVISOR_tmem_op,
                               HYPERVISOR_xenoprof_op, HYPERVISOR_xsm_op)
from miniguest.hypervisor.common import (console, domctl, event_channel, grant_table, kernel, memory, multicall,
                                         sched, time, vcpu_op)
from miniguest.hypervisor.hypercall import Hypercall, HypercallTable
from miniguest.hypervisor.pv import callback, descriptor_tables, iret, misc_hypercalls, traps
from miniguest.hypervisor.x86 import mm, physdev

# Xen's hypercalls miniguest does not offer: -ENOSYS, as from a Xen built without them (logged once).
NOT_OFFERED = tuple(Hypercall(nr, name, None) for nr, name in (
    (HYPERVISOR_platform_op, "platform_op"), (HYPERVISOR_xsm_op, "xsm_op"), (HYPERVISOR_nmi_op, "nmi_op"),
    (HYPERVISOR_xenoprof_op, "xenoprof_op"), (HYPERVISOR_hvm_op, "hvm_op"), (HYPERVISOR_kexec_op, "kexec_op"),
    (HYPERVISOR_tmem_op, "tmem_op"), (HYPERVISOR_argo_op, "argo_op"),
    (HYPERVISOR_dm_op, "dm_op"), (HYPERVISOR_hypfs_op, "hypfs_op")))

PV64_HYPERCALLS = HypercallTable.of(
    traps.HYPERCALLS, mm.HYPERCALLS, descriptor_tables.HYPERCALLS, misc_hypercalls.HYPERCALLS,
    callback.HYPERCALLS, sched.HYPERCALLS, memory.HYPERCALLS, multicall.HYPERCALLS, time.HYPERCALLS,
    event_channel.HYPERCALLS, kernel.HYPERCALLS, console.HYPERCALLS, physdev.HYPERCALLS, grant_table.HYPERCALLS,
    iret.HYPERCALLS, vcpu_op.HYPERCALLS, domctl.HYPERCALLS, NOT_OFFERED)
