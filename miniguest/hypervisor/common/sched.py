"""sched_op: yield, block, poll, shutdown, watchdogs.

Blocking stops the CPU and hands control to the domain's run loop, which sleeps in virtual time until the
next timer or event (never spinning on the host)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Optional

from miniguest.abi import errno
from miniguest.abi.sched import (SCHEDOP_block, SCHEDOP_poll, SCHEDOP_remote_shutdown, SCHEDOP_shutdown,
                                 SCHEDOP_shutdown_code, SCHEDOP_watchdog, SCHEDOP_yield, SHUTDOWN_NAMES,
                                 SHUTDOWN_watchdog)
from miniguest.abi.xen import HYPERVISOR_sched_op, HYPERVISOR_sched_op_compat
from miniguest.hypervisor.decode import DecodeCtx, Decoded, domid, put_list
from miniguest.hypervisor.hypercall import Hypercall, HypercallError, SubOp, SubOps, not_implemented

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.save import Fields
    from miniguest.hypervisor.vcpu import Vcpu

MAX_POLL_PORTS = 128
NR_WATCHDOGS = 2


def block(vcpu: "Vcpu") -> int:
    """Re-enable event delivery, then sleep until an event (Xen's vcpu_block_enable_events)."""
    vcpu.upcall_mask = 0
    if vcpu.events_need_delivery():
        return 0
    vcpu.blocked = True
    vcpu.stop_reason = "block"
    vcpu.uc.emu_stop()
    return 0


def poll(vcpu: "Vcpu", arg: int) -> int:
    ports_ptr, nr_ports, timeout = struct.unpack("<QI4xQ", vcpu.mem.read(arg, 24))
    if nr_ports > MAX_POLL_PORTS:
        raise HypercallError(-errno.EINVAL, "too many ports to poll")
    events = vcpu.domain.events
    ports = set()
    for i in range(nr_ports):
        port = struct.unpack("<I", vcpu.mem.read(ports_ptr + 4 * i, 4))[0]
        if port > events.max_ports:
            raise HypercallError(-errno.EINVAL, f"port {port} out of range")
        if events.test_pending(port):
            return 0
        ports.add(port)
    vcpu.blocked = True
    vcpu.poll_ports = ports
    vcpu.poll_deadline = timeout or None
    vcpu.stop_reason = "poll"
    vcpu.uc.emu_stop()
    return 0


def shutdown(vcpu: "Vcpu", reason: int) -> int:
    vcpu.domain.shutdown(reason & 0xFF, vcpu)
    vcpu.uc.emu_stop()
    return 0


def watchdog(vcpu: "Vcpu", arg: int) -> int:
    wid, timeout = struct.unpack("<II", vcpu.mem.read(arg, 8))
    dom = vcpu.domain
    dogs = dom.watchdogs
    if wid == 0:
        for i in range(1, NR_WATCHDOGS + 1):
            if i not in dogs:
                dogs[i] = _arm_watchdog(dom, i, dom.clock.now_ns() + timeout * 10**9)
                return i
        raise HypercallError(-errno.ENOSPC, "no free watchdog")
    if wid not in dogs:
        raise HypercallError(-errno.EINVAL, f"no watchdog {wid}")
    dom.timers.cancel(dogs.pop(wid))
    if timeout:
        dogs[wid] = _arm_watchdog(dom, wid, dom.clock.now_ns() + timeout * 10**9)
    return 0


def _arm_watchdog(dom: "Domain", wid: int, deadline: int) -> int:
    return dom.timers.add(deadline, lambda: _watchdog_fired(dom), {"what": "watchdog", "id": wid})


def _watchdog_fired(dom: "Domain") -> None:
    dom.log("watchdog timer expired")
    dom.shutdown(SHUTDOWN_watchdog, None)


def rearm_watchdog(dom: "Domain", saved: "Fields", deadline: int) -> None:
    """A saved watchdog timer (Timers.restore): back in the queue, under its id."""
    wid = saved.int("id", 1, NR_WATCHDOGS)
    dom.watchdogs[wid] = _arm_watchdog(dom, wid, deadline)


def _yield(vcpu: "Vcpu", arg: int) -> int:
    return 0


def _shutdown(vcpu: "Vcpu", arg: int) -> int:
    return shutdown(vcpu, struct.unpack("<I", vcpu.mem.read(arg, 4))[0])


def _shutdown_code(vcpu: "Vcpu", arg: int) -> int:
    vcpu.domain.shutdown_code = struct.unpack("<I", vcpu.mem.read(arg, 4))[0] & 0xFF
    return 0


def _remote_shutdown(vcpu: "Vcpu", arg: int) -> int:
    raise HypercallError(-errno.EPERM, "remote shutdown is for privileged domains")


def sched_op(vcpu: "Vcpu", cmd: int, arg: int) -> Optional[int]:
    return SUBOPS.run(cmd & 0xFFFFFFFF, vcpu, arg)


def sched_op_compat(vcpu: "Vcpu", cmd: int, arg: int) -> Optional[int]:
    """The pre-3.0.2 form: yield, block and shutdown only, the shutdown reason passed by value."""
    return COMPAT_SUBOPS.run(cmd & 0xFFFFFFFF, vcpu, arg)


# -- decoders -----------------------------------------------------------------------------------------------
def _reason(value: int) -> Any:
    return SHUTDOWN_NAMES.get(value, value)


def _shutdown_in(ctx: DecodeCtx) -> Decoded:
    return {"reason": _reason(ctx.u32(ctx.args[1]))}


def _shutdown_code_in(ctx: DecodeCtx) -> Decoded:
    return {"reason": _reason(ctx.u32(ctx.args[1]) & 0xFF)}


def _remote_shutdown_in(ctx: DecodeCtx) -> Decoded:
    dom, reason = ctx.unpack("<HxxI", ctx.args[1])
    return {"domain_id": domid(dom), "reason": _reason(reason)}


def _poll_in(ctx: DecodeCtx) -> Decoded:
    ports_ptr, nr_ports, timeout = ctx.unpack("<QI4xQ", ctx.args[1])
    ports, total = ctx.array(ports_ptr, nr_ports, "<I")
    return put_list({"timeout": timeout}, "ports", [p[0] for p in ports], total)


def _watchdog_in(ctx: DecodeCtx) -> Decoded:
    wid, timeout = ctx.unpack("<II", ctx.args[1])
    return {"id": wid, "timeout_s": timeout}


def _compat_shutdown_in(ctx: DecodeCtx) -> Decoded:
    return {"reason": _reason(ctx.args[1] & 0xFF)}


SUBOPS = SubOps((
    SubOp(SCHEDOP_yield, "yield", _yield),
    SubOp(SCHEDOP_block, "block", lambda vcpu, arg: block(vcpu)),
    SubOp(SCHEDOP_shutdown, "shutdown", _shutdown, decode_in=_shutdown_in),
    SubOp(SCHEDOP_poll, "poll", poll, decode_in=_poll_in),
    SubOp(SCHEDOP_remote_shutdown, "remote_shutdown", _remote_shutdown, decode_in=_remote_shutdown_in),
    SubOp(SCHEDOP_shutdown_code, "shutdown_code", _shutdown_code, decode_in=_shutdown_code_in),
    SubOp(SCHEDOP_watchdog, "watchdog", watchdog, decode_in=_watchdog_in),
))
# sched_op_compat: the first three sub-ops, the shutdown reason passed by value. The later sub-ops have rows
# for their names (traces call a compat poll "poll"), answered as unknown: the compat form never had them.
COMPAT_SUBOPS = SubOps(
    (SubOp(SCHEDOP_yield, "yield", _yield), SubOp(SCHEDOP_block, "block", lambda vcpu, arg: block(vcpu)),
     SubOp(SCHEDOP_shutdown, "shutdown", shutdown, decode_in=_compat_shutdown_in))
    + tuple(SubOp(row.nr, row.name, not_implemented(row.nr)) for row in SUBOPS if row.nr > SCHEDOP_shutdown))
HYPERCALLS = (Hypercall(HYPERVISOR_sched_op, "sched_op", sched_op, 2, subop_arg=0, subops=SUBOPS),
              Hypercall(HYPERVISOR_sched_op_compat, "sched_op_compat", sched_op_compat, 2, subop_arg=0,
                        subops=COMPAT_SUBOPS))
