"""Time: vcpu_time_info, the wallclock, set_timer_op and the per-vCPU timers behind VIRQ_TIMER.

System time and the TSC both come from the virtual clock (vclock.py): 1 TSC tick = 1 ns, so the record is
tsc_to_system_mul = 2^31 with tsc_shift = 1 (((delta << 1) * 2^31) >> 32 == delta) and never drifts.
Xen gives every PV vCPU a 100 Hz periodic timer by default (VCPUOP_stop_periodic_timer turns it off).
Its only effect is VIRQ_TIMER, so it is armed only while VIRQ_TIMER is bound on that vCPU: a guest that
never binds it does not tick through virtual time, and one that is blocked with nothing able to wake it is
reported as hung instead of idling forever.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from miniguest.abi.shared_info import (SI_WC_SEC, SI_WC_SEC_HI, SI_WC_VERSION, VI_TIME,
                                       XEN_PVCLOCK_TSC_STABLE_BIT)
from miniguest.abi.xen import HYPERVISOR_set_timer_op, VIRQ_TIMER
from miniguest.hypervisor.decode import DecodeCtx, Decoded
from miniguest.hypervisor.hypercall import Hypercall
from miniguest.hypervisor.ram import AddressSpace, GuestFault

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.vcpu import Vcpu

TSC_TO_SYSTEM_MUL = 1 << 31
TSC_SHIFT = 1
DEFAULT_PERIOD_NS = 10_000_000
TIMER_SLOP_LIMIT = 1 << 50           # Xen: timeouts this far ahead are treated as "in 100 ms"
FAR_TIMEOUT_NS = 100_000_000


VCPU_TIME_INFO_SIZE = 32


def update_vcpu_time(vcpu: "Vcpu") -> None:
    """Publish the time record with the version seqlock: odd while being written. With a registered time
    memory area (VCPUOP_register_vcpu_time_memory_area) the record is copied there too, through the guest
    kernel's page tables, the same way (version odd, record, version even); a copy that faults is dropped,
    as Xen's __copy_to_guest failures are."""
    view, off = vcpu.vcpu_info()
    base = off + VI_TIME
    version = struct.unpack_from("<I", view, base)[0]
    odd = (version + 1) | 1
    struct.pack_into("<I", view, base, odd)
    now = vcpu.domain.clock.now_ns()
    tsc = vcpu.domain.tsc_of(now)
    record = struct.pack("<QQIbB", tsc, now, TSC_TO_SYSTEM_MUL, TSC_SHIFT, XEN_PVCLOCK_TSC_STABLE_BIT)
    view[base + 8:base + 8 + len(record)] = record
    struct.pack_into("<I", view, base, odd + 1)
    if vcpu.time_info_guest:
        _copy_time_to_guest(vcpu, odd, record)


def _copy_time_to_guest(vcpu: "Vcpu", odd: int, record: bytes) -> None:
    aspace = AddressSpace(vcpu.domain.mem, vcpu.guest_table << 12)      # the guest kernel's tables
    addr = vcpu.time_info_guest
    try:
        aspace.write(addr, struct.pack("<I", odd))
        aspace.write(addr + 8, record)
        aspace.write(addr, struct.pack("<I", odd + 1))
    except GuestFault:
        pass


def set_wallclock(domain: "Domain", sec: int, nsec: int) -> None:
    si = domain.shared_info_view()
    version = struct.unpack_from("<I", si, SI_WC_VERSION)[0]
    struct.pack_into("<I", si, SI_WC_VERSION, (version + 1) | 1)
    struct.pack_into("<II", si, SI_WC_SEC, sec & 0xFFFFFFFF, nsec)
    struct.pack_into("<I", si, SI_WC_SEC_HI, (sec >> 32) & 0xFFFFFFFF)
    struct.pack_into("<I", si, SI_WC_VERSION, ((version + 1) | 1) + 1)


class VcpuTimer:
    """The singleshot and periodic timers of one vCPU; both raise VIRQ_TIMER."""

    def __init__(self, vcpu: "Vcpu") -> None:
        self.vcpu = vcpu
        self.singleshot: Optional[int] = None          # timer handle
        self.singleshot_deadline: Optional[int] = None
        self.period = DEFAULT_PERIOD_NS
        self.periodic: Optional[int] = None
        self.periodic_next: Optional[int] = None
        self.virq_bound = False                           # VIRQ_TIMER bound on this vCPU

    @property
    def _timers(self):
        return self.vcpu.domain.timers

    def fire(self, why: str) -> None:
        vcpu = self.vcpu
        vcpu.domain.trace_timer(vcpu, why)
        update_vcpu_time(vcpu)
        vcpu.domain.events.send_virq(VIRQ_TIMER, vcpu.id)

    def _tag(self, what: str) -> dict:
        return {"what": what, "vcpu": self.vcpu.id}

    def _arm(self, deadline: int, fn, what: str) -> int:
        """Add a timer. The run loop armed the clock for the earliest timer before this run slice began: a
        new earlier one must end the slice (once the hypercall returns) so the loop re-arms the clock,
        else it would fire only when the slice ends, up to MAX_SLICE instructions late."""
        earliest = self._timers.next_deadline()
        handle = self._timers.add(deadline, fn, self._tag(what))
        if earliest is None or deadline < earliest:
            self.vcpu.uc.emu_stop()
        return handle

    def set_singleshot(self, deadline: int) -> None:
        self.stop_singleshot()
        self.singleshot_deadline = deadline
        self.singleshot = self._arm(deadline, self._singleshot_fired, "singleshot")

    def _singleshot_fired(self) -> None:
        self.singleshot = None
        self.singleshot_deadline = None
        self.fire("singleshot")

    def stop_singleshot(self) -> None:
        self._timers.cancel(self.singleshot)
        self.singleshot = None
        self.singleshot_deadline = None

    def start_periodic(self, now: int) -> None:
        """(Re)arm the periodic timer, ticking at multiples of the period since boot."""
        self.stop_periodic()
        if self.period and self.virq_bound:
            self.periodic_next = (now // self.period + 1) * self.period
            self.periodic = self._arm(self.periodic_next, self._periodic_fired, "periodic")

    def virq_binding_changed(self, bound: bool) -> None:
        """events.py tells us when VIRQ_TIMER is bound or closed on this vCPU."""
        self.virq_bound = bound
        if bound:
            self.start_periodic(self.vcpu.domain.clock.now_ns())
        else:
            self.stop_periodic()

    def _periodic_fired(self) -> None:
        assert self.periodic_next is not None
        self.periodic_next += self.period
        self.periodic = self._timers.add(self.periodic_next, self._periodic_fired, self._tag("periodic"))
        self.fire("periodic")

    def stop_periodic(self) -> None:
        self._timers.cancel(self.periodic)
        self.periodic = None
        self.periodic_next = None

    # -- saved state: the period with the vCPU, armed timers with the domain's queue (Timers.save) -------
    def forget_armed(self) -> None:
        """Before the domain's timer queue is restored: no timer of ours is armed any more."""
        self.singleshot = self.singleshot_deadline = None
        self.periodic = self.periodic_next = None

    def rearm(self, what: str, deadline: int) -> None:
        """A saved timer of ours, back in the (restored) queue."""
        if what == "singleshot":
            self.set_singleshot(deadline)
        else:
            self.periodic_next = deadline
            self.periodic = self._timers.add(deadline, self._periodic_fired, self._tag("periodic"))


def set_timer_op(vcpu: "Vcpu", timeout: int) -> int:
    """Absolute system time in ns; 0 cancels; a deadline in the past fires at once."""
    timer = vcpu.timer
    if timeout == 0:
        timer.stop_singleshot()
        return 0
    now = vcpu.domain.clock.now_ns()
    offset = timeout - now
    if timeout >= 1 << 63:           # (s64)timeout < 0: wrapped negative
        offset = -1
    if offset > 0 and offset >> 50:
        timeout = now + FAR_TIMEOUT_NS
    elif offset <= 0:
        timeout = now
    timer.set_singleshot(timeout)
    return 0


def _set_timer_in(ctx: DecodeCtx) -> Decoded:
    timeout = ctx.args[0]
    return {"timeout": timeout, "in_ns": timeout - ctx.now() if timeout else None}


HYPERCALLS = (Hypercall(HYPERVISOR_set_timer_op, "set_timer_op", set_timer_op, 1, decode_in=_set_timer_in),)
