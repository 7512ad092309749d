"""public/event_channel.h: the 2-level event channel operations and their argument structs."""
from __future__ import annotations

import ctypes

EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_init_control = 11
EVTCHNOP_expand_array = 12
EVTCHNOP_set_priority = 13
EVTCHNOP_reset_cont = 14

EVTCHNSTAT_closed = 0
EVTCHNSTAT_unbound = 1
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5


class evtchn_alloc_unbound(ctypes.LittleEndianStructure):
    _fields_ = [("dom", ctypes.c_uint16), ("remote_dom", ctypes.c_uint16), ("port", ctypes.c_uint32)]


class evtchn_bind_interdomain(ctypes.LittleEndianStructure):
    _fields_ = [("remote_dom", ctypes.c_uint16), ("_pad", ctypes.c_uint16),
                ("remote_port", ctypes.c_uint32), ("local_port", ctypes.c_uint32)]


class evtchn_bind_virq(ctypes.LittleEndianStructure):
    _fields_ = [("virq", ctypes.c_uint32), ("vcpu", ctypes.c_uint32), ("port", ctypes.c_uint32)]


class evtchn_bind_ipi(ctypes.LittleEndianStructure):
    _fields_ = [("vcpu", ctypes.c_uint32), ("port", ctypes.c_uint32)]


class evtchn_port_arg(ctypes.LittleEndianStructure):
    """close, send and unmask all take a bare port."""
    _fields_ = [("port", ctypes.c_uint32)]


class evtchn_status(ctypes.LittleEndianStructure):
    _fields_ = [("dom", ctypes.c_uint16), ("_pad", ctypes.c_uint16), ("port", ctypes.c_uint32),
                ("status", ctypes.c_uint32), ("vcpu", ctypes.c_uint32),
                ("u0", ctypes.c_uint32), ("u1", ctypes.c_uint32)]   # u: unbound.dom | interdomain{dom, port} | virq


class evtchn_bind_vcpu(ctypes.LittleEndianStructure):
    _fields_ = [("port", ctypes.c_uint32), ("vcpu", ctypes.c_uint32)]


class evtchn_reset(ctypes.LittleEndianStructure):
    _fields_ = [("dom", ctypes.c_uint16)]


class evtchn_op(ctypes.LittleEndianStructure):
    """The compat hypercall 16 passes {u32 cmd; union u} with the union at offset 8 (24 bytes of payload)."""
    _fields_ = [("cmd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("u", ctypes.c_uint8 * 24)]


ARG_STRUCTS = {
    EVTCHNOP_bind_interdomain: evtchn_bind_interdomain, EVTCHNOP_bind_virq: evtchn_bind_virq,
    EVTCHNOP_close: evtchn_port_arg, EVTCHNOP_send: evtchn_port_arg, EVTCHNOP_status: evtchn_status,
    EVTCHNOP_alloc_unbound: evtchn_alloc_unbound, EVTCHNOP_bind_ipi: evtchn_bind_ipi,
    EVTCHNOP_bind_vcpu: evtchn_bind_vcpu, EVTCHNOP_unmask: evtchn_port_arg, EVTCHNOP_reset: evtchn_reset,
}
assert ctypes.sizeof(evtchn_status) == 24 and ctypes.sizeof(evtchn_bind_interdomain) == 12
