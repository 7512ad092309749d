"""event_channel_op (and its pre-3.0.2 compat form): the guest's interface to events.py."""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from miniguest.abi.event_channel import (ARG_STRUCTS, EVTCHNOP_NAMES, EVTCHNOP_alloc_unbound,
                                         EVTCHNOP_bind_interdomain, EVTCHNOP_bind_ipi, EVTCHNOP_bind_vcpu,
                                         EVTCHNOP_bind_virq, EVTCHNOP_close, EVTCHNOP_reset, EVTCHNOP_send,
                                         EVTCHNOP_status, EVTCHNOP_unmask)
from miniguest.abi.xen import HYPERVISOR_event_channel_op, HYPERVISOR_event_channel_op_compat
from miniguest.hypervisor.hypercall import UnknownSubop, hypercall

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

NAMES = {k: v[len("EVTCHNOP_"):] for k, v in EVTCHNOP_NAMES.items()}


def evtchn_op(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    cls = ARG_STRUCTS.get(cmd)
    if cls is None:
        raise UnknownSubop(cmd)
    a = vcpu.mem.read_struct(arg, cls)
    ev = vcpu.domain.events
    out = True
    if cmd == EVTCHNOP_alloc_unbound:
        a.port = ev.alloc_unbound(a.dom, a.remote_dom)
    elif cmd == EVTCHNOP_bind_interdomain:
        a.local_port = ev.bind_interdomain(a.remote_dom, a.remote_port)
    elif cmd == EVTCHNOP_bind_virq:
        a.port = ev.bind_virq(a.virq, a.vcpu)
    elif cmd == EVTCHNOP_bind_ipi:
        a.port = ev.bind_ipi(a.vcpu)
    elif cmd == EVTCHNOP_close:
        ev.close(a.port)
        out = False
    elif cmd == EVTCHNOP_send:
        ev.send(a.port)
        out = False
    elif cmd == EVTCHNOP_status:
        a.status, a.vcpu, a.u0, a.u1 = ev.status(a.dom, a.port)
    elif cmd == EVTCHNOP_unmask:
        ev.unmask(a.port)
        out = False
    elif cmd == EVTCHNOP_bind_vcpu:
        ev.bind_vcpu(a.port, a.vcpu)
        out = False
    elif cmd == EVTCHNOP_reset:
        ev.reset(a.dom)
        out = False
    if out:
        vcpu.mem.write(arg, bytes(a)[:ctypes.sizeof(cls)])
    return 0


@hypercall(HYPERVISOR_event_channel_op, 2, subop_arg=0, subop_names=NAMES)
def event_channel_op(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    return evtchn_op(vcpu, cmd & 0xFFFFFFFF, arg)


@hypercall(HYPERVISOR_event_channel_op_compat, 1)
def event_channel_op_compat(vcpu: "Vcpu", arg: int) -> int:
    """{u32 cmd; pad; union u} in one guest buffer; the union starts at offset 8."""
    cmd = int.from_bytes(vcpu.mem.read(arg, 4), "little")
    return evtchn_op(vcpu, cmd, arg + 8)
