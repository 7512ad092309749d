"""sched_op: yield, block, poll, shutdown, watchdogs.

Blocking stops the CPU and hands control to the domain's run loop, which sleeps in virtual time until the
next timer or event (never spinning on the host)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi import errno
from miniguest.abi.sched import (SCHEDOP_block, SCHEDOP_poll, SCHEDOP_remote_shutdown, SCHEDOP_shutdown,
                                 SCHEDOP_shutdown_code, SCHEDOP_watchdog, SCHEDOP_yield, SHUTDOWN_watchdog)
from miniguest.abi.xen import HYPERVISOR_sched_op, HYPERVISOR_sched_op_compat
from miniguest.hypervisor.hypercall import HypercallError, UnknownSubop, hypercall

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.save import Fields
    from miniguest.hypervisor.vcpu import Vcpu

NAMES = {SCHEDOP_yield: "yield", SCHEDOP_block: "block", SCHEDOP_shutdown: "shutdown", SCHEDOP_poll: "poll",
         SCHEDOP_remote_shutdown: "remote_shutdown", SCHEDOP_shutdown_code: "shutdown_code",
         SCHEDOP_watchdog: "watchdog"}
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


@hypercall(HYPERVISOR_sched_op, 2, subop_arg=0, subop_names=NAMES)
def sched_op(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    cmd &= 0xFFFFFFFF
    if cmd == SCHEDOP_yield:
        return 0
    if cmd == SCHEDOP_block:
        return block(vcpu)
    if cmd == SCHEDOP_shutdown:
        return shutdown(vcpu, struct.unpack("<I", vcpu.mem.read(arg, 4))[0])
    if cmd == SCHEDOP_poll:
        return poll(vcpu, arg)
    if cmd == SCHEDOP_shutdown_code:
        vcpu.domain.shutdown_code = struct.unpack("<I", vcpu.mem.read(arg, 4))[0] & 0xFF
        return 0
    if cmd == SCHEDOP_watchdog:
        return watchdog(vcpu, arg)
    if cmd == SCHEDOP_remote_shutdown:
        raise HypercallError(-errno.EPERM, "remote shutdown is for privileged domains")
    raise UnknownSubop(cmd)


@hypercall(HYPERVISOR_sched_op_compat, 2, subop_arg=0, subop_names=NAMES)
def sched_op_compat(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    """The pre-3.0.2 form: the shutdown reason is the argument itself."""
    cmd &= 0xFFFFFFFF
    if cmd == SCHEDOP_yield:
        return 0
    if cmd == SCHEDOP_block:
        return block(vcpu)
    if cmd == SCHEDOP_shutdown:
        return shutdown(vcpu, arg)
    raise UnknownSubop(cmd)
