"""The trap table and what the CPU delivers through it without a fault (Xen: xen/arch/x86/pv/traps.c,
the set_trap_table hypercall, and the sysenter/int paths of x86_64/entry.S).

A PV guest registers its exception handlers with HYPERVISOR_set_trap_table (Xen's trap_info array); Vcpu.bounce
and Vcpu.inject_exception deliver through it (Xen's create_bounce_frame / pv_inject_event). `int N` and
SYSENTER reach the guest's handlers here too.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi import errno
from miniguest.abi.arch_x86 import FLAT_USER_SS64, TI_MASK_EVENTS, TRAP_gp_fault, canonical
from miniguest.abi.callback import CALLBACKTYPE_sysenter
from miniguest.abi.xen import HYPERVISOR_set_trap_table
from miniguest.hypervisor.crash import GuestCrash
from miniguest.hypervisor.decode import MAX_ITEMS, DecodeCtx, Decoded
from miniguest.hypervisor.hypercall import Hypercall

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

_TRAP = struct.Struct("<BBH4xQ")


class TrapEntry:
    """One entry of the guest's trap table (Xen's trap_info): flags (DPL, TI_MASK_EVENTS), cs, handler."""
    __slots__ = ("flags", "cs", "address")

    def __init__(self, flags: int = 0, cs: int = 0, address: int = 0) -> None:
        self.flags, self.cs, self.address = flags, cs, address


def set_trap_table(vcpu: "Vcpu", traps: int) -> int:
    """Install entries until one with address 0; a NULL table clears every vector."""
    table = vcpu.trap_table
    if traps == 0:
        for i in range(256):
            table[i] = TrapEntry()
        return 0
    while True:
        vector, flags, cs, address = _TRAP.unpack(vcpu.mem.read(traps, 16))
        if address == 0:
            return 0
        if not canonical(address):
            return -errno.EINVAL
        table[vector] = TrapEntry(flags, cs | 3, address)
        traps += 16


# -- trap-table entries reached without a CPU exception -------------------------------------------------
def software_interrupt(vcpu: "Vcpu", vector: int, rip_after: int) -> None:
    """`int N`, `int3`: deliver vector N if the trap table allows it from this mode, else #GP((N<<3)|2)."""
    ti = vcpu.trap_table[vector]
    dpl = ti.flags & 3
    needed = 1 if vcpu.kernel_mode else 3
    if vector in (3, 4) or dpl >= needed:
        vcpu.domain.trace_exception(vcpu, vector, None, rip_after, None, software=True)
        if not ti.address:
            raise GuestCrash(f"software interrupt {vector} with no handler in the trap table")
        vcpu.bounce(ti.address, None, bool(ti.flags & TI_MASK_EVENTS), rip_after)
        return
    vcpu.inject_exception(TRAP_gp_fault, (vector << 3) | 2, rip_after - 2)


def sysenter_entry(vcpu: "Vcpu") -> None:
    """SYSENTER from a 64-bit PV guest (an Intel CPU: AMD has none in long mode). Xen's sysenter_entry
    records a frame with rip 0, a null cs with RPL 3, rsp 0 and FLAT_USER_SS (the guest's registers stay
    as the SYSEXIT convention leaves them), then bounces to the sysenter callback, or to the #GP handler
    with error code 0 when none is registered. From guest kernel mode the frame would be built at that
    %rsp 0: Xen crashes the domain."""
    if vcpu.kernel_mode:
        raise GuestCrash("sysenter in guest kernel mode (Xen would build the bounce frame at %rsp 0)")
    frame = (0, 3, 0, FLAT_USER_SS64)
    address, mask = vcpu.compat_callbacks.get(CALLBACKTYPE_sysenter, (0, False))
    if address:
        vcpu.bounce(address, None, mask, frame=frame)
    else:
        ti = vcpu.trap_table[TRAP_gp_fault]
        vcpu.domain.trace_exception(vcpu, TRAP_gp_fault, 0, 0, None)
        if not ti.address:
            raise GuestCrash("sysenter with no sysenter callback and no #GP handler")
        vcpu.bounce(ti.address, 0, bool(ti.flags & TI_MASK_EVENTS), frame=frame)
    vcpu.deliver_events()


def _set_trap_table_in(ctx: DecodeCtx) -> Decoded:
    va = ctx.args[0]
    if va == 0:
        return {"clear": True}
    traps = []
    for i in range(257):
        vector, flags, cs, address = ctx.unpack("<BBH4xQ", va + 16 * i)
        if address == 0:
            break
        if len(traps) < MAX_ITEMS:
            traps.append({"vector": vector, "flags": flags, "cs": cs, "handler": ctx.symbol(address) or address})
    return {"traps": traps, "count": i}


HYPERCALLS = (Hypercall(HYPERVISOR_set_trap_table, "set_trap_table", set_trap_table, 1,
                        decode_in=_set_trap_table_in),)
