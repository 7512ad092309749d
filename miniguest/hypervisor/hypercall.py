"""The hypercall table: number -> handler. The one place every hypercall passes through.

Handlers live in one module per hypercall family and register themselves with `@hypercall`. `dispatch` is
where tracing and fault injection attach (`Domain.hypercall_observers`, `Domain.fault_injector`) and where
guest-caused errors become errno values: a bad pointer (GuestFault) is -EFAULT, an unknown hypercall or
sub-op is -ENOSYS (logged once per domain), never a Python exception.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import errno
from miniguest.abi.xen import HYPERCALL_NAMES
from miniguest.hypervisor.ram import GuestFault
from miniguest.hypervisor.x86.page_types import PageTypeError

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

Handler = Callable[..., Optional[int]]
MASK64 = (1 << 64) - 1


@dataclass
class Hypercall:
    nr: int
    name: str
    handler: Handler
    nargs: int
    subop_arg: Optional[int] = None             # which argument (0-based) selects a sub-op
    subop_names: dict[int, str] = field(default_factory=dict)

    def subop_name(self, args: tuple[int, ...]) -> Optional[str]:
        if self.subop_arg is None:
            return None
        op = args[self.subop_arg]
        return self.subop_names.get(op, str(op))


class HypercallError(Exception):
    """Raised by a handler to return -errno (for paths deep inside helpers)."""

    def __init__(self, err: int, why: str = "") -> None:
        super().__init__(why or errno.name(err))
        self.err = err


class UnknownSubop(Exception):
    def __init__(self, op: int) -> None:
        super().__init__(op)
        self.op = op


TABLE: dict[int, Hypercall] = {}


def hypercall(nr: int, nargs: int, subop_arg: Optional[int] = None,
              subop_names: Optional[dict[int, str]] = None) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        TABLE[nr] = Hypercall(nr, HYPERCALL_NAMES.get(nr, fn.__name__), fn, nargs, subop_arg,
                              dict(subop_names or {}))
        return fn
    return register


def name_of(nr: int) -> str:
    hc = TABLE.get(nr)
    return hc.name if hc else HYPERCALL_NAMES.get(nr, f"hypercall_{nr}")


def call(vcpu: "Vcpu", nr: int, args: tuple[int, ...]) -> Optional[int]:
    """Run one hypercall (also used by multicall). Returns the value for rax, or None when the handler set
    the guest's registers itself (iret)."""
    domain = vcpu.domain
    hc = TABLE.get(nr)
    if hc is None:
        domain.log_once(("hypercall", nr), f"unknown hypercall {nr} ({HYPERCALL_NAMES.get(nr, '?')}): -ENOSYS")
        return -errno.ENOSYS
    injected = domain.fault_injector.check(vcpu, hc, args) if domain.fault_injector else None
    if injected is not None:
        return injected
    try:
        return hc.handler(vcpu, *args[:hc.nargs])
    except GuestFault:
        return -errno.EFAULT
    except (HypercallError, PageTypeError) as e:
        return e.err
    except UnknownSubop as e:
        domain.log_once(("subop", nr, e.op), f"{hc.name}: unknown sub-op {e.op}: -ENOSYS")
        return -errno.ENOSYS


def dispatch(vcpu: "Vcpu", nr: int, a1: int, a2: int, a3: int, a4: int, a5: int) -> Optional[int]:
    args = (a1, a2, a3, a4, a5)
    domain = vcpu.domain
    observers = domain.hypercall_observers
    if observers:
        for obs in observers:
            obs.before(vcpu, nr, args)
        result = call(vcpu, nr, args)
        for obs in observers:
            obs.after(vcpu, nr, args, result)
        return result
    return call(vcpu, nr, args)


_loaded = False


def load_families() -> None:
    """Import every hypercall family module (each registers its handlers); done once, when the first vCPU
    is created, so that family modules can import each other freely."""
    global _loaded
    if _loaded:
        return
    from miniguest.hypervisor.common import (console, domctl, event_channel, grant_table,  # noqa: F401
                                             kernel, memory, multicall, sched, time, vcpu_op)
    from miniguest.hypervisor.pv import callback, descriptor_tables, iret, misc_hypercalls, traps  # noqa: F401
    from miniguest.hypervisor.x86 import mm, physdev  # noqa: F401
    _loaded = True
