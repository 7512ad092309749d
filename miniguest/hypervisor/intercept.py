"""The interception interface: how listeners -- tracing (debug/tracer.py), fault injection (regress/faults.py),
the debugger's and the snapshot command's stops, tests -- hear about and steer what the hypervisor does,
without the hypervisor knowing who they are. Each channel of a Domain is typed by a protocol here, and the
core calls exactly these methods (nothing is looked up with hasattr):

  Domain.hypercall_observers  HypercallObserver   before/after every hypercall the guest makes
                                                  (hypercall.dispatch, around the handler)
  Domain.fault_injector       FaultInjection      asked before a hypercall's handler runs (a value it returns
                                                  is the result instead) and before a notification is raised
                                                  in the guest or sent to dom0 (True: taken -- dropped, or held
                                                  back and delivered later with EventChannels.deliver_later)
  EventChannels.on_raise      EventObserver       each notification that goes through: "raise" (into the
                                                  guest), "send" (to dom0)
  Domain.trace_sinks          TraceSink           everything else that happens, as (kind, fields): exception
                                                  bounces, upcalls, timers, console bytes, privileged-op
                                                  emulation, idle jumps, shutdown, crash, log, inject
  (dom0) message hooks        MessageHook         each ring message of a xenstore connection
                                                  (backends/xenstore: XenstoreDaemon.message_hooks)

`Interceptor` is the whole interface; Domain.attach registers one object on every domain channel.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.hypercall import Hypercall
    from miniguest.hypervisor.vcpu import Vcpu


class HypercallObserver(Protocol):
    def before(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...]) -> None:
        """The guest made hypercall `nr`; its handler has not run yet."""

    def after(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...], result: Optional[int]) -> None:
        """The handler ran; `result` is what the guest gets in rax (None: it set its registers itself)."""


class FaultInjection(Protocol):
    def hypercall_fault(self, vcpu: "Vcpu", hc: "Hypercall", args: tuple[int, ...]) -> Optional[int]:
        """A result to return instead of running the handler (a negative errno), or None."""

    def event_fault(self, domain: "Domain", port: int, direction: str) -> bool:
        """True if this notification ("raise" into the guest, "send" from it to dom0) is taken: dropped, or
        held back to be delivered later with EventChannels.deliver_later."""


class EventObserver(Protocol):
    def __call__(self, port: int, what: str) -> None:
        """A notification went through: `what` is "raise" (into the guest) or "send" (to dom0)."""


class TraceSink(Protocol):
    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        """Something happened (debug/tracer.py lists the kinds and their fields)."""


class RingEndpoint(Protocol):
    """The side of a ring a message hook sees: whose it is."""
    domid: int


class MessageHook(Protocol):
    def __call__(self, conn: RingEndpoint, direction: str, msg_type: int, req_id: int, tx_id: int,
                 payload: bytes) -> Optional[str]:
        """A xenstore message ("request" from the client, "reply" or "event" to it). For a request, an errno
        name to answer with instead of handling it (fault injection), else None."""


class Interceptor(HypercallObserver, Protocol):
    """A listener on every domain channel (the Tracer): Domain.attach / Domain.detach."""

    def on_event(self, port: int, what: str) -> None: ...

    def on_trace(self, kind: str, fields: dict[str, Any]) -> None: ...
