"""Event channels (Xen: xen/common/event_channel.c): ports and their bindings (unbound, interdomain, VIRQ,
IPI), the event_channel_op hypercall and its compat form, and dom0's ends.

How a raised port shows up in the guest -- the pending and mask bits and how the vCPU is told -- is the job
of the port ABI (Xen's evtchn_port_ops): the 2-level ABI of event_2l.py, the one every domain starts with.
EventChannels calls it through `PortOps`, so another ABI (FIFO, event_fifo.py) plugs in beside it.

dom0's daemons are the other end of interdomain channels. They do not run in a guest: a dom0 port is a
Python callback, called when the guest sends on the connected port (see `Dom0Evtchn`).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from miniguest.abi import errno
from miniguest.abi.event_channel import (ARG_STRUCTS, EVTCHNOP_alloc_unbound, EVTCHNOP_bind_interdomain,
                                         EVTCHNOP_bind_ipi, EVTCHNOP_bind_pirq, EVTCHNOP_bind_vcpu,
                                         EVTCHNOP_bind_virq, EVTCHNOP_close, EVTCHNOP_expand_array,
                                         EVTCHNOP_init_control, EVTCHNOP_reset, EVTCHNOP_reset_cont, EVTCHNOP_send,
                                         EVTCHNOP_set_priority, EVTCHNOP_status, EVTCHNOP_unmask,
                                         EVTCHNSTAT_closed, EVTCHNSTAT_interdomain, EVTCHNSTAT_ipi,
                                         EVTCHNSTAT_unbound, EVTCHNSTAT_virq)
from miniguest.abi.xen import (DOMID_SELF, HYPERVISOR_event_channel_op, HYPERVISOR_event_channel_op_compat,
                               NR_EVENT_CHANNELS, NR_VIRQS, PER_VCPU_VIRQS, VIRQ_NAMES, VIRQ_TIMER)
from miniguest.hypervisor.common.event_2l import Evtchn2L
from miniguest.hypervisor.decode import DecodeCtx, Decoded, domid, virq_name
from miniguest.hypervisor.hypercall import Hypercall, HypercallError, SubOp, SubOps, UnknownSubop, not_implemented
from miniguest.hypervisor.intercept import EventObserver
from miniguest.hypervisor.save import Fields, StateError

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.vcpu import Vcpu

DEFAULT_MAX_PORTS = 1023        # xl's default max_event_channels


class EvtchnError(HypercallError):
    """An event channel operation Xen refuses; `err` is the negative errno."""


@dataclass
class Port:
    state: int = EVTCHNSTAT_closed
    vcpu: int = 0                   # vCPU notified when the port is raised
    remote_dom: int = 0             # unbound: who may bind; interdomain: the peer domain
    remote_port: int = 0            # interdomain: the peer's port
    virq: int = -1

    def describe(self) -> str:
        if self.state == EVTCHNSTAT_unbound:
            return f"unbound (for d{self.remote_dom})"
        if self.state == EVTCHNSTAT_interdomain:
            return f"interdomain d{self.remote_dom}:{self.remote_port}"
        if self.state == EVTCHNSTAT_virq:
            return f"virq {VIRQ_NAMES.get(self.virq, self.virq)}"
        if self.state == EVTCHNSTAT_ipi:
            return "ipi"
        return "closed"


@dataclass
class _Dom0Port:
    domid: int
    guest_port: Optional[int]          # None while unbound
    on_event: Callable[[], None]


class Dom0Evtchn:
    """dom0's end of event channels, as libxenevtchn gives a daemon: bind, notify, get called back.

    A backend either binds to a port the toolstack allocated in the guest for dom0 (`bind_interdomain`, as
    xenconsoled and xenstored do for the console and store rings) or allocates an unbound dom0 port that the
    guest binds to with EVTCHNOP_bind_interdomain (`alloc_unbound`). `notify(local_port)` raises the guest's
    end; `on_event()` is called when the guest sends on its end.
    """

    def __init__(self) -> None:
        self.domains: dict[int, "Domain"] = {}
        self._ports: dict[int, _Dom0Port] = {}
        self._next = 1

    def _new_local(self, rec: _Dom0Port) -> int:
        local = self._next
        self._next += 1
        self._ports[local] = rec
        return local

    def bind_interdomain(self, domid: int, remote_port: int, on_event: Callable[[], None]) -> int:
        dom = self.domains.get(domid)
        if dom is None:
            raise EvtchnError(-errno.ESRCH, f"no domain {domid}")
        local = self._new_local(_Dom0Port(domid, remote_port, on_event))
        try:
            dom.events.connect_dom0(remote_port, local)
        except EvtchnError:
            del self._ports[local]
            raise
        return local

    def alloc_unbound(self, domid: int, on_event: Callable[[], None]) -> int:
        return self._new_local(_Dom0Port(domid, None, on_event))

    def bind_from_guest(self, domid: int, local: int, guest_port: int) -> None:
        """The guest bound `guest_port` to our unbound `local` (EVTCHNOP_bind_interdomain)."""
        rec = self._ports.get(local)
        if rec is None or rec.guest_port is not None or rec.domid != domid:
            raise EvtchnError(-errno.EINVAL, f"dom0 port {local} is not unbound for d{domid}")
        rec.guest_port = guest_port

    def notify(self, local_port: int) -> None:
        rec = self._ports.get(local_port)
        if rec is None or rec.guest_port is None:
            return
        dom = self.domains.get(rec.domid)
        if dom is not None:
            dom.events.raise_from_remote(rec.guest_port, 0, local_port)

    def unbind(self, local_port: int) -> None:
        rec = self._ports.pop(local_port, None)
        if rec is not None and rec.guest_port is not None:
            dom = self.domains.get(rec.domid)
            if dom is not None:
                dom.events.disconnect_dom0(rec.guest_port, local_port)

    def deliver(self, local_port: int) -> None:
        """The guest sent on the port connected to our local_port."""
        rec = self._ports.get(local_port)
        if rec is not None:
            rec.on_event()

    def guest_closed(self, domid: int, local_port: int) -> None:
        """The guest closed its end: our port goes back to unbound, as in Xen."""
        rec = self._ports.get(local_port)
        if rec is not None and rec.domid == domid:
            rec.guest_port = None

    def describe(self, local_port: int) -> str:
        rec = self._ports.get(local_port)
        if rec is None:
            return "closed"
        return f"d{rec.domid}:{rec.guest_port}" if rec.guest_port is not None else f"unbound for d{rec.domid}"

    def is_peer(self, domid: int, local_port: int, guest_port: int) -> bool:
        """Our `local_port` is connected to `guest_port` of `domid`."""
        rec = self._ports.get(local_port)
        return rec is not None and rec.domid == domid and rec.guest_port == guest_port

    def guest_ports(self, domid: int) -> list[tuple[int, Optional[int]]]:
        """(our local port, the guest port it is connected to or None) for our ends toward `domid`."""
        return [(local, rec.guest_port) for local, rec in sorted(self._ports.items()) if rec.domid == domid]

    # -- saved state: dom0's ends toward one domain (the callbacks are the backends', bound anew) ----------
    def save(self, domid: int) -> list[list]:
        return [[local, rec.guest_port] for local, rec in sorted(self._ports.items()) if rec.domid == domid]

    def restore(self, domid: int, items: list, where: str) -> None:
        """Which guest port each of our ends toward `domid` is connected to. The ends themselves must be the
        ones the toolstack bound again for the rebuilt domain."""
        mine = {local for local, rec in self._ports.items() if rec.domid == domid}
        seen = set()
        for i, item in enumerate(items):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
                    and (item[1] is None or isinstance(item[1], int))):
                raise StateError(f"{where}[{i}] must be [local port, guest port or null]")
            local, guest = item
            if local not in mine:
                raise StateError(f"dom0 port {local} is not one this toolstack provides")
            self._ports[local].guest_port = guest
            seen.add(local)
        if seen != mine:
            raise StateError("the dom0 event channel ends differ from this toolstack's")


class PortOps(Protocol):
    """A port ABI (Xen's evtchn_port_ops): where a port's pending and mask state live and how raising one
    reaches the vCPU. Every operation reads the guest's memory when it needs it (never a Python copy)."""

    def set_pending(self, vcpu: "Vcpu", port: int) -> None: ...

    def unmask(self, vcpu: "Vcpu", port: int) -> None: ...

    def is_pending(self, port: int) -> bool: ...

    def is_masked(self, port: int) -> bool: ...

    def pending_unmasked(self) -> list[int]: ...


class EventChannels:
    """One domain's event channel table."""

    def __init__(self, domain: "Domain", max_ports: int = DEFAULT_MAX_PORTS) -> None:
        self.domain = domain
        self.max_ports = min(max_ports, NR_EVENT_CHANNELS - 1)
        self.ports: dict[int, Port] = {}
        self.virq_ports: dict[tuple[int, int], int] = {}    # (vcpu, virq) -> port
        self.on_raise: list[EventObserver] = []   # notifications that go through (intercept.py)
        self.port_ops: PortOps = Evtchn2L(domain)

    # -- the port ABI -------------------------------------------------------------------------------------
    def test_pending(self, port: int) -> bool:
        return self.port_ops.is_pending(port)

    def test_masked(self, port: int) -> bool:
        return self.port_ops.is_masked(port)

    def pending_unmasked(self) -> list[int]:
        """The ports an upcall handler would find: pending and not masked."""
        return self.port_ops.pending_unmasked()

    def set_pending(self, port: int, intercept: bool = True) -> None:
        """Xen's evtchn_2l_set_pending: the guest-visible effect of raising `port`. `intercept=False`: a
        notification fault injection held back and now delivers (`deliver_later`)."""
        fi = self.domain.fault_injector     # fault injection may drop or hold back the raise
        if intercept and fi is not None and fi.event_fault(self.domain, port, "raise"):
            return
        p = self.ports.get(port)
        vcpu_id = p.vcpu if p else 0
        for cb in self.on_raise:
            cb(port, "raise")
        vcpu = self.domain.vcpus[vcpu_id] if vcpu_id < len(self.domain.vcpus) else self.domain.vcpus[0]
        self.port_ops.set_pending(vcpu, port)

    # -- allocation ---------------------------------------------------------------------------------------
    def _alloc(self) -> int:
        for port in range(1, self.max_ports + 1):
            if port not in self.ports:
                self.ports[port] = Port()
                return port
        raise EvtchnError(-errno.ENOSPC, "no free event channel ports")

    def _get(self, port: int) -> Port:
        p = self.ports.get(port)
        if p is None or not 0 < port <= self.max_ports:
            raise EvtchnError(-errno.EINVAL, f"port {port} is not open")
        return p

    def _check_vcpu(self, vcpu: int) -> None:
        if not 0 <= vcpu < len(self.domain.vcpus):
            raise EvtchnError(-errno.ENOENT, f"no vCPU {vcpu}")

    def _resolve_dom(self, dom: int) -> int:
        return self.domain.domid if dom == DOMID_SELF else dom

    # -- operations (EVTCHNOP_*) --------------------------------------------------------------------------
    def alloc_unbound(self, dom: int, remote_dom: int) -> int:
        if self._resolve_dom(dom) != self.domain.domid:
            raise EvtchnError(-errno.EPERM, "only a privileged domain may allocate ports in another domain")
        remote = self._resolve_dom(remote_dom)
        port = self._alloc()
        p = self.ports[port]
        p.state = EVTCHNSTAT_unbound
        p.remote_dom = remote
        return port

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        """Bind to a port another domain (or dom0, or ourselves) left unbound for us."""
        remote = self._resolve_dom(remote_dom)
        if remote == self.domain.domid:
            rp = self.ports.get(remote_port)
            if rp is None or rp.state != EVTCHNSTAT_unbound or rp.remote_dom != self.domain.domid:
                raise EvtchnError(-errno.EINVAL, f"port {remote_port} is not unbound for d{self.domain.domid}")
            port = self._alloc()
            p = self.ports[port]
            p.state, p.remote_dom, p.remote_port = EVTCHNSTAT_interdomain, remote, remote_port
            rp.state, rp.remote_dom, rp.remote_port = EVTCHNSTAT_interdomain, remote, port
            return port
        if remote == 0:
            dom0 = self.domain.dom0_evtchn
            port = self._alloc()
            try:
                dom0.bind_from_guest(self.domain.domid, remote_port, port)
            except EvtchnError:
                del self.ports[port]
                raise
            p = self.ports[port]
            p.state, p.remote_dom, p.remote_port = EVTCHNSTAT_interdomain, 0, remote_port
            return port
        raise EvtchnError(-errno.ESRCH, f"no domain {remote}")

    def bind_virq(self, virq: int, vcpu: int) -> int:
        if not 0 <= virq < NR_VIRQS:
            raise EvtchnError(-errno.EINVAL, f"VIRQ {virq} out of range")
        if virq not in PER_VCPU_VIRQS and vcpu != 0:
            raise EvtchnError(-errno.EINVAL, f"global VIRQ {virq} must be bound on vCPU 0")
        self._check_vcpu(vcpu)
        if (vcpu, virq) in self.virq_ports:
            raise EvtchnError(-errno.EEXIST, f"VIRQ {virq} already bound on vCPU {vcpu}")
        port = self._alloc()
        p = self.ports[port]
        p.state, p.virq, p.vcpu = EVTCHNSTAT_virq, virq, vcpu
        self.virq_ports[(vcpu, virq)] = port
        if virq == VIRQ_TIMER:
            self.domain.vcpus[vcpu].timer.virq_binding_changed(True)
        return port

    def bind_ipi(self, vcpu: int) -> int:
        self._check_vcpu(vcpu)
        port = self._alloc()
        p = self.ports[port]
        p.state, p.vcpu = EVTCHNSTAT_ipi, vcpu
        return port

    def close(self, port: int) -> None:
        p = self._get(port)
        if p.state == EVTCHNSTAT_virq:
            self.virq_ports.pop((p.vcpu, p.virq), None)
            if p.virq == VIRQ_TIMER and p.vcpu < len(self.domain.vcpus):
                self.domain.vcpus[p.vcpu].timer.virq_binding_changed(False)
        elif p.state == EVTCHNSTAT_interdomain:
            if p.remote_dom == self.domain.domid:
                rp = self.ports.get(p.remote_port)
                if rp is not None and rp.state == EVTCHNSTAT_interdomain:
                    rp.state, rp.remote_dom, rp.remote_port = EVTCHNSTAT_unbound, self.domain.domid, 0
            elif p.remote_dom == 0:
                self.domain.dom0_evtchn.guest_closed(self.domain.domid, p.remote_port)
        del self.ports[port]
        # Xen clears nothing in the guest's bitmaps on close; the port just stops being raised.

    def send(self, port: int, intercept: bool = True) -> None:
        p = self._get(port)
        if p.state == EVTCHNSTAT_interdomain:
            if p.remote_dom == self.domain.domid:
                self.set_pending(p.remote_port, intercept)
            elif p.remote_dom == 0:
                fi = self.domain.fault_injector     # fault injection may drop or hold back the notification
                if intercept and fi is not None and fi.event_fault(self.domain, port, "send"):
                    return
                for cb in self.on_raise:
                    cb(port, "send")
                self.domain.dom0_evtchn.deliver(p.remote_port)
            return
        if p.state == EVTCHNSTAT_ipi:
            self.set_pending(port, intercept)
            return
        if p.state == EVTCHNSTAT_unbound:
            return                      # nobody listening yet: Xen drops it silently
        raise EvtchnError(-errno.EINVAL, f"cannot send on a {p.describe()} port")

    def status(self, dom: int, port: int) -> tuple[int, int, int, int]:
        """(status, vcpu, u0, u1) as evtchn_status reports them."""
        if self._resolve_dom(dom) != self.domain.domid:
            raise EvtchnError(-errno.EPERM, "status of another domain's port")
        if not 0 <= port <= self.max_ports:
            raise EvtchnError(-errno.EINVAL, f"port {port} out of range")
        p = self.ports.get(port)
        if p is None:
            return EVTCHNSTAT_closed, 0, 0, 0
        if p.state == EVTCHNSTAT_unbound:
            return p.state, p.vcpu, p.remote_dom, 0
        if p.state == EVTCHNSTAT_interdomain:
            return p.state, p.vcpu, p.remote_dom, p.remote_port
        if p.state == EVTCHNSTAT_virq:
            return p.state, p.vcpu, p.virq, 0
        return p.state, p.vcpu, 0, 0

    def unmask(self, port: int) -> None:
        """EVTCHNOP_unmask: the port ABI clears the mask and, if the port is pending, tells the vCPU."""
        if not 0 <= port <= self.max_ports or port not in self.ports:
            raise EvtchnError(-errno.EINVAL, f"port {port} is not open")
        self.port_ops.unmask(self.domain.vcpus[self.ports[port].vcpu], port)

    def bind_vcpu(self, port: int, vcpu: int) -> None:
        p = self._get(port)
        self._check_vcpu(vcpu)
        if p.state == EVTCHNSTAT_virq and p.virq in PER_VCPU_VIRQS:
            raise EvtchnError(-errno.EINVAL, "per-vCPU VIRQs cannot be rebound")
        if p.state not in (EVTCHNSTAT_virq, EVTCHNSTAT_unbound, EVTCHNSTAT_interdomain):
            raise EvtchnError(-errno.EINVAL, f"cannot rebind a {p.describe()} port")
        if p.state == EVTCHNSTAT_virq:
            self.virq_ports.pop((p.vcpu, p.virq), None)
            self.virq_ports[(vcpu, p.virq)] = port
        p.vcpu = vcpu

    def reset(self, dom: int) -> None:
        if self._resolve_dom(dom) != self.domain.domid:
            raise EvtchnError(-errno.EPERM, "reset of another domain's ports")
        # Like Xen's evtchn_reset: every port is closed, the toolstack's too (dom0's ends go back to
        # unbound, so the guest can bind to them again with EVTCHNOP_bind_interdomain).
        for port in sorted(self.ports):
            self.close(port)

    # -- hypervisor side ----------------------------------------------------------------------------------
    def send_virq(self, virq: int, vcpu: int = 0) -> bool:
        port = self.virq_ports.get((vcpu, virq))
        if port is None:
            return False
        self.set_pending(port)
        return True

    def alloc_toolstack_port(self) -> int:
        """A port the toolstack allocates for dom0 (console/store) before the guest starts."""
        port = self._alloc()
        p = self.ports[port]
        p.state, p.remote_dom = EVTCHNSTAT_unbound, 0
        return port

    def connect_dom0(self, port: int, dom0_port: int) -> None:
        p = self.ports.get(port)
        if p is None or p.state != EVTCHNSTAT_unbound or p.remote_dom != 0:
            raise EvtchnError(-errno.EINVAL, f"d{self.domain.domid} port {port} is not unbound for dom0")
        p.state, p.remote_dom, p.remote_port = EVTCHNSTAT_interdomain, 0, dom0_port

    def disconnect_dom0(self, port: int, dom0_port: int) -> None:
        p = self.ports.get(port)
        if p is not None and p.state == EVTCHNSTAT_interdomain and p.remote_dom == 0 \
                and p.remote_port == dom0_port:
            p.state, p.remote_port = EVTCHNSTAT_unbound, 0

    def raise_from_remote(self, port: int, remote_dom: int, remote_port: int) -> None:
        p = self.ports.get(port)
        if p is None or p.state != EVTCHNSTAT_interdomain or p.remote_dom != remote_dom \
                or p.remote_port != remote_port:
            return
        self.set_pending(port)

    def deliver_later(self, port: int, direction: str, deadline: int) -> int:
        """Deliver a notification at `deadline` (virtual time) instead of now, without intercepting it again:
        fault injection's delay. `direction` "raise" (to the guest) or "send" (from the guest to dom0)."""
        tag = {"what": "delayed_event", "port": port, "dir": direction}
        return self.domain.timers.add(deadline, lambda: self._deliver_held(port, direction), tag)

    def _deliver_held(self, port: int, direction: str) -> None:
        if direction == "raise":
            self.set_pending(port, intercept=False)
            return
        try:
            self.send(port, intercept=False)
        except EvtchnError:
            pass                 # the guest closed the port meanwhile: nothing to deliver to

    def rearm_delayed(self, saved: Fields, deadline: int) -> None:
        """A saved `deliver_later` timer (Timers.restore)."""
        direction = saved.str("dir")
        if direction not in ("raise", "send"):
            raise StateError(f"{saved.where}.dir must be raise or send")
        self.deliver_later(saved.int("port", 1, self.max_ports), direction, deadline)

    def describe(self) -> list[str]:
        lines = []
        for port in sorted(self.ports):
            p = self.ports[port]
            flags = ("P" if self.test_pending(port) else "-") + ("M" if self.test_masked(port) else "-")
            lines.append(f"{port:5d} {flags} vcpu{p.vcpu} {p.describe()}")
        return lines

    # -- saved state (hypervisor/save.py): the table; the pending/mask bits are in guest memory ----------
    def save(self) -> dict:
        return {"max_ports": self.max_ports,
                "ports": [[port, p.state, p.vcpu, p.remote_dom, p.remote_port, p.virq]
                          for port, p in sorted(self.ports.items())],
                "dom0": self.domain.dom0_evtchn.save(self.domain.domid)}

    def restore(self, f: Fields) -> None:
        domain = self.domain
        if f.int("max_ports") != self.max_ports:
            raise StateError("events.max_ports differs from this configuration")
        ports: dict[int, Port] = {}
        virqs: dict[tuple[int, int], int] = {}
        for i, item in enumerate(f.list("ports", 4096)):
            if not (isinstance(item, list) and len(item) == 6 and all(isinstance(x, int) for x in item)):
                raise StateError(f"{f.where}.ports[{i}] must be 6 integers")
            port, state, vcpu, rdom, rport, virq = item
            if not 0 < port <= self.max_ports or not 0 <= state <= 5 or not 0 <= vcpu < len(domain.vcpus) \
                    or not 0 <= rdom <= 0x7FF4 or not 0 <= rport < 1 << 32 or not -1 <= virq < 24 or port in ports:
                raise StateError(f"{f.where}.ports[{i}] is out of range")
            ports[port] = Port(state, vcpu, rdom, rport, virq)
            if state == EVTCHNSTAT_virq:
                # (bind_virq's rules: a known VIRQ, global ones on vCPU 0, one port per VIRQ and vCPU)
                if not 0 <= virq < NR_VIRQS or (virq not in PER_VCPU_VIRQS and vcpu != 0) or (vcpu, virq) in virqs:
                    raise StateError(f"{f.where}.ports[{i}] binds VIRQ {virq} as bind_virq never would")
                virqs[(vcpu, virq)] = port
            elif state not in (EVTCHNSTAT_closed, EVTCHNSTAT_unbound, EVTCHNSTAT_interdomain, EVTCHNSTAT_ipi):
                raise StateError(f"{f.where}.ports[{i}] has state {state}: bindings this domain cannot make")
        # A connection is made by both ends: one to a domain other than dom0 and this one (loopback) would let
        # the restored guest signal a domain that never agreed to it.
        for port, p in ports.items():
            if p.state != EVTCHNSTAT_interdomain or p.remote_dom == 0:
                continue
            peer = ports.get(p.remote_port)
            if p.remote_dom != domain.domid or peer is None or peer.state != EVTCHNSTAT_interdomain \
                    or (peer.remote_dom, peer.remote_port) != (domain.domid, port):
                raise StateError(f"port {port} is connected to d{p.remote_dom} port {p.remote_port}, which is "
                                 "not its peer")
        self.ports = ports
        self.virq_ports = virqs
        dom0 = domain.dom0_evtchn
        dom0.restore(domain.domid, f.list("dom0", 4096), f"{f.where}.dom0")
        for port, p in ports.items():
            if p.state == EVTCHNSTAT_interdomain and p.remote_dom == 0 \
                    and not dom0.is_peer(domain.domid, p.remote_port, port):
                raise StateError(f"port {port} is connected to a dom0 port that is not its peer")
        for local, guest in dom0.guest_ports(domain.domid):
            p = ports.get(guest) if guest is not None else None
            if guest is not None and (p is None or p.state != EVTCHNSTAT_interdomain
                                      or (p.remote_dom, p.remote_port) != (0, local)):
                raise StateError(f"dom0 port {local} is connected to guest port {guest}, which is not its peer")
        for vcpu_id, virq in virqs:
            if virq == VIRQ_TIMER:
                # Bound, as before the save; the periodic timer itself comes back with the timer queue.
                domain.vcpus[vcpu_id].timer.virq_bound = True


# -- the hypercall: event_channel_op and its pre-3.0.2 compat form ----------------------------------------
# Each sub-op gets the domain's table and its argument struct (abi.event_channel.ARG_STRUCTS), fills in the
# struct's outputs and says whether it has any to copy back.
def _alloc_unbound(ev: EventChannels, a: Any) -> bool:
    a.port = ev.alloc_unbound(a.dom, a.remote_dom)
    return True


def _bind_interdomain(ev: EventChannels, a: Any) -> bool:
    a.local_port = ev.bind_interdomain(a.remote_dom, a.remote_port)
    return True


def _bind_virq(ev: EventChannels, a: Any) -> bool:
    a.port = ev.bind_virq(a.virq, a.vcpu)
    return True


def _bind_ipi(ev: EventChannels, a: Any) -> bool:
    a.port = ev.bind_ipi(a.vcpu)
    return True


def _close(ev: EventChannels, a: Any) -> bool:
    ev.close(a.port)
    return False


def _send(ev: EventChannels, a: Any) -> bool:
    ev.send(a.port)
    return False


def _status(ev: EventChannels, a: Any) -> bool:
    a.status, a.vcpu, a.u0, a.u1 = ev.status(a.dom, a.port)
    return True


def _unmask(ev: EventChannels, a: Any) -> bool:
    ev.unmask(a.port)
    return False


def _bind_vcpu(ev: EventChannels, a: Any) -> bool:
    ev.bind_vcpu(a.port, a.vcpu)
    return False


def _reset(ev: EventChannels, a: Any) -> bool:
    ev.reset(a.dom)
    return False


def evtchn_op(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    row = SUBOPS.get(cmd)
    cls = ARG_STRUCTS.get(cmd)
    if row is None or row.handler is None or cls is None:
        raise UnknownSubop(cmd)
    a = vcpu.mem.read_struct(arg, cls)
    if row.handler(vcpu.domain.events, a):
        vcpu.mem.write(arg, bytes(a)[:ctypes.sizeof(cls)])
    return 0


def event_channel_op(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    return evtchn_op(vcpu, cmd & 0xFFFFFFFF, arg)


def event_channel_op_compat(vcpu: "Vcpu", arg: int) -> int:
    """{u32 cmd; pad; union u} in one guest buffer; the union starts at offset 8."""
    cmd = int.from_bytes(vcpu.mem.read(arg, 4), "little")
    return evtchn_op(vcpu, cmd, arg + 8)


# -- decoders: the same for both forms, the compat form's arguments 8 bytes into its buffer -----------------
EVTCHN_STATUS = {EVTCHNSTAT_closed: "closed", EVTCHNSTAT_unbound: "unbound", EVTCHNSTAT_interdomain: "interdomain",
                 3: "pirq", EVTCHNSTAT_virq: "virq", EVTCHNSTAT_ipi: "ipi"}
_ARGS_IN = {   # sub-op -> (layout, field names) of what the guest passes
    EVTCHNOP_alloc_unbound: ("<HH", ("dom", "remote_dom")),
    EVTCHNOP_bind_interdomain: ("<H2xI", ("remote_dom", "remote_port")),
    EVTCHNOP_bind_virq: ("<II", ("virq", "vcpu")),
    EVTCHNOP_bind_ipi: ("<I", ("vcpu",)),
    EVTCHNOP_close: ("<I", ("port",)),
    EVTCHNOP_send: ("<I", ("port",)),
    EVTCHNOP_unmask: ("<I", ("port",)),
    EVTCHNOP_status: ("<H2xI", ("dom", "port")),
    EVTCHNOP_bind_vcpu: ("<II", ("port", "vcpu")),
    EVTCHNOP_reset: ("<H", ("dom",)),
}
_PORT_OUT = {EVTCHNOP_alloc_unbound: (4, "port"), EVTCHNOP_bind_interdomain: (8, "local_port"),
             EVTCHNOP_bind_virq: (8, "port"), EVTCHNOP_bind_ipi: (4, "port")}


def _decode_in(ctx: DecodeCtx, op: int, arg: int) -> Optional[Decoded]:
    spec = _ARGS_IN.get(op)
    if spec is None:
        return None
    fmt, names = spec
    out = dict(zip(names, ctx.unpack(fmt, arg)))
    for key in ("dom", "remote_dom"):
        if key in out:
            out[key] = domid(out[key])
    if op == EVTCHNOP_bind_virq:
        out["virq"] = virq_name(out["virq"])
    return out


def _decode_out(ctx: DecodeCtx, op: int, arg: int) -> Optional[Decoded]:
    if op in _PORT_OUT:
        off, key = _PORT_OUT[op]
        return {key: ctx.u32(arg + off)}
    if op == EVTCHNOP_status:
        status, vcpu, u0, u1 = ctx.unpack("<IIII", arg + 8)
        out: Decoded = {"status": EVTCHN_STATUS.get(status, status), "vcpu": vcpu}
        if status == EVTCHNSTAT_unbound:
            out["remote_dom"] = u0 & 0xFFFF
        elif status == EVTCHNSTAT_interdomain:
            out["remote_dom"], out["remote_port"] = u0 & 0xFFFF, u1
        elif status == EVTCHNSTAT_virq:
            out["virq"] = virq_name(u0)
        return out
    return None


def _compat_in(ctx: DecodeCtx) -> Decoded:
    cmd = ctx.u32(ctx.args[0])
    row = SUBOPS.get(cmd)
    name = row.name if row is not None and cmd in ARG_STRUCTS else str(cmd)
    return {"cmd": name, **(_decode_in(ctx, cmd, ctx.args[0] + 8) or {})}


def _compat_out(ctx: DecodeCtx, ins: Decoded) -> Optional[Decoded]:
    op = next((row.nr for row in SUBOPS if row.name == ins.get("cmd")), -1)
    return _decode_out(ctx, op, ctx.args[0] + 8)


def _row(nr: int, name: str, handler: Callable[[EventChannels, Any], bool]) -> SubOp:
    return SubOp(nr, name, handler,
                 decode_in=(lambda ctx: _decode_in(ctx, nr, ctx.args[1])) if nr in _ARGS_IN else None,
                 decode_out=(lambda ctx, ins: _decode_out(ctx, nr, ctx.args[1]))
                 if nr in _PORT_OUT or nr == EVTCHNOP_status else None)


SUBOPS = SubOps((
    _row(EVTCHNOP_bind_interdomain, "bind_interdomain", _bind_interdomain),
    _row(EVTCHNOP_bind_virq, "bind_virq", _bind_virq),
    SubOp(EVTCHNOP_bind_pirq, "bind_pirq", not_implemented(EVTCHNOP_bind_pirq)),
    _row(EVTCHNOP_close, "close", _close),
    _row(EVTCHNOP_send, "send", _send),
    _row(EVTCHNOP_status, "status", _status),
    _row(EVTCHNOP_alloc_unbound, "alloc_unbound", _alloc_unbound),
    _row(EVTCHNOP_bind_ipi, "bind_ipi", _bind_ipi),
    _row(EVTCHNOP_bind_vcpu, "bind_vcpu", _bind_vcpu),
    _row(EVTCHNOP_unmask, "unmask", _unmask),
    _row(EVTCHNOP_reset, "reset", _reset),
    SubOp(EVTCHNOP_init_control, "init_control", not_implemented(EVTCHNOP_init_control)),
    SubOp(EVTCHNOP_expand_array, "expand_array", not_implemented(EVTCHNOP_expand_array)),
    SubOp(EVTCHNOP_set_priority, "set_priority", not_implemented(EVTCHNOP_set_priority)),
    SubOp(EVTCHNOP_reset_cont, "reset_cont", not_implemented(EVTCHNOP_reset_cont)),
))
HYPERCALLS = (
    Hypercall(HYPERVISOR_event_channel_op, "event_channel_op", event_channel_op, 2, subop_arg=0, subops=SUBOPS),
    Hypercall(HYPERVISOR_event_channel_op_compat, "event_channel_op_compat", event_channel_op_compat, 1,
              decode_in=_compat_in, decode_out=_compat_out),
)
