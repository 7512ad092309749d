"""Callbacks a PV guest registers with Xen: the event upcall, failsafe, syscall, sysenter and NMI entry
points (Xen: xen/arch/x86/pv/callback.c: set_callbacks, callback_op)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from miniguest.abi import errno
from miniguest.abi.arch_x86 import canonical
from miniguest.abi.callback import (CALLBACKF_mask_events, CALLBACKOP_register, CALLBACKOP_unregister,
                                    CALLBACKTYPE_NAMES,
                                    CALLBACKTYPE_event, CALLBACKTYPE_failsafe, CALLBACKTYPE_nmi,
                                    CALLBACKTYPE_syscall, CALLBACKTYPE_syscall32, CALLBACKTYPE_sysenter)
from miniguest.abi.xen import HYPERVISOR_callback_op, HYPERVISOR_set_callbacks
from miniguest.hypervisor.decode import DecodeCtx, Decoded
from miniguest.hypervisor.hypercall import Hypercall, SubOp, SubOps

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu


def register_callback(vcpu: "Vcpu", ctype: int, flags: int, address: int) -> int:
    if not canonical(address):
        return -errno.EINVAL
    mask = bool(flags & CALLBACKF_mask_events)
    if ctype == CALLBACKTYPE_event:
        vcpu.event_callback = address
    elif ctype == CALLBACKTYPE_failsafe:
        vcpu.failsafe_callback = address
        vcpu.failsafe_mask_events = mask
    elif ctype == CALLBACKTYPE_syscall:
        vcpu.syscall_callback = address
        vcpu.syscall_mask_events = mask
    elif ctype in (CALLBACKTYPE_syscall32, CALLBACKTYPE_sysenter):
        vcpu.compat_callbacks[ctype] = (address, mask)
    elif ctype == CALLBACKTYPE_nmi:
        vcpu.nmi_callback = address
    else:
        return -errno.ENOSYS
    return 0


def set_callbacks(vcpu: "Vcpu", event: int, failsafe: int, syscall: int) -> int:
    for ctype, addr in ((CALLBACKTYPE_event, event), (CALLBACKTYPE_failsafe, failsafe),
                        (CALLBACKTYPE_syscall, syscall)):
        register_callback(vcpu, ctype, 0, addr)
    return 0


def _register(vcpu: "Vcpu", arg: int) -> int:
    ctype, flags, address = struct.unpack("<HH4xQ", vcpu.mem.read(arg, 16))
    return register_callback(vcpu, ctype, flags, address)


def _unregister(vcpu: "Vcpu", arg: int) -> int:
    ctype = struct.unpack("<H", vcpu.mem.read(arg, 2))[0]
    if ctype == CALLBACKTYPE_nmi:
        vcpu.nmi_callback = 0
        return 0
    if ctype in (CALLBACKTYPE_event, CALLBACKTYPE_failsafe, CALLBACKTYPE_syscall,
                 CALLBACKTYPE_syscall32, CALLBACKTYPE_sysenter):
        return -errno.EINVAL       # Xen only lets the NMI callback be unregistered
    return -errno.ENOSYS


def callback_op(vcpu: "Vcpu", cmd: int, arg: int) -> Optional[int]:
    return SUBOPS.run(cmd & 0xFFFFFFFF, vcpu, arg)


# -- decoders -----------------------------------------------------------------------------------------------
def _register_in(ctx: DecodeCtx) -> Decoded:
    ctype, flags, address = ctx.unpack("<HH4xQ", ctx.args[1])
    return {"type": CALLBACKTYPE_NAMES.get(ctype, ctype), "flags": flags,
            "address": address, "handler": ctx.symbol(address) if address else None}


def _unregister_in(ctx: DecodeCtx) -> Decoded:
    ctype = ctx.u16(ctx.args[1])
    return {"type": CALLBACKTYPE_NAMES.get(ctype, ctype)}


def _set_callbacks_in(ctx: DecodeCtx) -> Decoded:
    return {k: (ctx.symbol(a) or a) if a else 0 for k, a in zip(("event", "failsafe", "syscall"), ctx.args[:3])}


SUBOPS = SubOps((SubOp(CALLBACKOP_register, "register", _register, decode_in=_register_in),
                 SubOp(CALLBACKOP_unregister, "unregister", _unregister, decode_in=_unregister_in)))
HYPERCALLS = (Hypercall(HYPERVISOR_set_callbacks, "set_callbacks", set_callbacks, 3, decode_in=_set_callbacks_in),
              Hypercall(HYPERVISOR_callback_op, "callback_op", callback_op, 2, subop_arg=0, subops=SUBOPS))
