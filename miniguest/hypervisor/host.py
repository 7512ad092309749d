"""The public host interface: what dom0 gets from Xen on this machine, and what the layers above the
hypervisor (toolstack, backends, debug, regress, cli) may use of it.

Xen gives dom0 its libraries over hypercalls; here they are the methods of `Host`:

    libxenctrl (domctl)       create_domain, destroy_domain, domain, pause_domain, unpause_domain,
                              domain_state, on_domain_exit, get_vcpu_context, set_vcpu_context
    libxenforeignmemory       map_foreign
    libxengnttab              map_grant_ref, unmap_grant_ref (a backend mapping a frontend's grant),
                              grant_copy (GNTTABOP_copy: copying to/from a frontend's grants)
    libxenevtchn              evtchn: Dom0Evtchn (bind_interdomain, alloc_unbound, notify, unbind)

and the objects they hand out: the `Domain` (Xen's struct domain: run it, read its state, save/restore it)
and its `Vcpu`s, and the hypercall table (HYPERCALLS). The other public modules of the hypervisor are `save` (the state-record convention every
object follows), `intercept` (the typed interface tracing, fault injection and the debugger listen through)
and `debugger` (breakpoints, watchpoints, single-step). Everything else in miniguest/hypervisor/ is Xen's
inside; import-linter (pyproject.toml) keeps the layers above from importing it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, TypeVar, Union

from miniguest.hypervisor.common.event_channel import Dom0Evtchn, EvtchnError
from miniguest.hypervisor.common.grant_table import GrantError, map_for_dom0, release_transient, unmap_for_dom0
from miniguest.hypervisor.crash import NO_SYMBOLS, Symbolizer
from miniguest.hypervisor.domain import (BUDGET, CRASHED, CREATED, FINAL_STATES, HUNG, PAUSED, RUNNING,
                                         SHUTDOWN, STOPPED, Domain, DomainConfig, on_sigint)
from miniguest.hypervisor.hostloop import HostLoop
from miniguest.hypervisor.hypercall import Hypercall, HypercallTable
from miniguest.hypervisor.pv.hypercall import PV64_HYPERCALLS
from miniguest.hypervisor.ram import AddressSpace, GuestFault
from miniguest.hypervisor.vcpu import Vcpu
from miniguest.hypervisor.vcpu_regs import save as _save_registers
from miniguest.hypervisor.x86.page_types import PGT_l1, PGT_l4, PGT_writable, PageTypeError

__all__ = ["Host", "GrantMapping", "GrantRef", "GrantCopySegment", "VcpuContext", "Domain", "DomainConfig",
           "Vcpu", "AddressSpace", "HostLoop",
           "Dom0Evtchn", "EvtchnError", "GrantError", "GuestFault", "PageTypeError", "Symbolizer", "NO_SYMBOLS",
           "Hypercall", "HypercallTable", "HYPERCALLS", "CREATED", "RUNNING", "PAUSED", "SHUTDOWN", "CRASHED",
           "BUDGET", "HUNG", "STOPPED", "FINAL_STATES", "on_sigint"]

# The hypercalls a PV guest has: names, sub-ops, argument decoders (what traces, fault-injection rules and
# gdb's catchpoints name). Every domain dispatches through this table (Domain.hypercalls).
HYPERCALLS: HypercallTable = PV64_HYPERCALLS

D = TypeVar("D", bound=Domain)


@dataclass
class VcpuContext:
    """The start-of-day context a PV builder gives a vCPU (the part of Xen's vcpu_guest_context it sets):
    entry point, boot stack, start_info in %rsi, and the L4 table for %cr3 (whose type reference the vCPU
    takes, as arch_set_info_guest does)."""
    rip: int
    rsp: int
    rsi: int
    cr3_mfn: int


class GrantMapping:
    """dom0's mapping of one grant of a domain (xengnttab_map_grant_ref): `view` is the granted frame (4 KiB,
    read-only if asked). Each mapping pins the grant (the guest sees GTF_reading/GTF_writing) until
    Host.unmap_grant_ref, which also releases `view`."""

    def __init__(self, domid: int, ref: int, readonly: bool, mfn: int, view: memoryview) -> None:
        self.domid, self.ref, self.readonly, self.mfn = domid, ref, readonly, mfn
        self.view: Optional[memoryview] = view


class GrantRef(NamedTuple):
    """One side of a grant copy in another domain: `offset` bytes into the frame `domid` granted as `ref`."""
    domid: int
    ref: int
    offset: int = 0


@dataclass
class GrantCopySegment:
    """One GNTTABOP_copy operation (xengnttab_grant_copy_segment_t): `len` bytes from `source` to `dest`, each
    a grant of another domain (GrantRef) or a buffer of dom0's (source: bytes-like, dest: a writable buffer,
    from its start). `status` is set to Xen's GNTST_* for the operation."""
    len: int
    source: Union[GrantRef, bytes, bytearray, memoryview]
    dest: Union[GrantRef, bytearray, memoryview]
    status: int = 0


GNTST_bad_copy_arg = -10
_PAGE = 4096


class Host:
    """The machine: its domains, dom0's event channel ends, the host I/O loop."""

    def __init__(self, first_domid: int = 1) -> None:
        self.loop = HostLoop()
        self.dom0_evtchn = Dom0Evtchn()
        self.domains: dict[int, Domain] = {}
        self.services: dict[str, object] = {}       # dom0 daemons shared by all domains (xenstored)
        self._next_domid = first_domid              # a restored domain keeps its id

    @property
    def evtchn(self) -> Dom0Evtchn:
        """dom0's end of event channels (libxenevtchn)."""
        return self.dom0_evtchn

    # -- domains (domctl) ---------------------------------------------------------------------------------
    def create_domain(self, config: DomainConfig, domain_class: "type[D]" = Domain) -> D:  # type: ignore
        """XEN_DOMCTL_createdomain with its memory: a new domain (no vCPU yet) under the next free domid.
        `domain_class`: a subclass of Domain the toolstack keeps its own per-domain state in."""
        domid = self._next_domid
        self._next_domid += 1
        domain = domain_class(config, self, domid)
        self.domains[domid] = domain
        self.dom0_evtchn.domains[domid] = domain
        return domain

    def destroy_domain(self, domid: int) -> None:
        """XEN_DOMCTL_destroydomain: the domain is gone from the machine."""
        self.domains.pop(domid, None)
        self.dom0_evtchn.domains.pop(domid, None)

    def domain(self, domid: int) -> Domain:
        dom = self.domains.get(domid)
        if dom is None:
            raise LookupError(f"no domain {domid}")
        return dom

    def pause_domain(self, domid: int) -> None:
        """Stop a running domain at the next opportunity (safe from any thread)."""
        self.domain(domid).pause()

    def unpause_domain(self, domid: int, until: Optional[Callable[[Domain], bool]] = None) -> str:
        """Let the domain run (on this thread) until it pauses, `until(domain)` holds or it ends: its state."""
        return self.domain(domid).run(until)

    def domain_state(self, domid: int) -> str:
        return self.domain(domid).state

    def on_domain_exit(self, domid: int, callback: Callable[[Domain], None]) -> None:
        """Call `callback(domain)` when the domain reaches a final state (Xen's VIRQ_DOM_EXC for dom0)."""
        self.domain(domid).on_final.append(callback)

    def get_vcpu_context(self, domid: int, vcpu: int) -> dict[str, Any]:
        """Every register of a stopped vCPU by name (hypervisor/vcpu_regs.py)."""
        return _save_registers(self.domain(domid).vcpus[vcpu])

    def set_vcpu_context(self, domid: int, vcpu: int, ctx: VcpuContext) -> None:
        """Set a new vCPU's start-of-day context (XEN_DOMCTL_setvcpucontext as a PV builder uses it): the vCPU
        takes a type reference on its L4 (PageTypeError if it is not a valid L4 of the domain)."""
        dom = self.domain(domid)
        dom.frames.get_type(ctx.cr3_mfn, PGT_l4, domid)
        dom.vcpus[vcpu].start_of_day(ctx.rip, ctx.rsp, ctx.rsi, ctx.cr3_mfn)

    def pin_table(self, domid: int, mfn: int, level: int) -> None:
        """MMUEXT_PIN_Ln_TABLE on the domain's behalf (a builder pinning the bootstrap page tables): the table
        is validated as a level-`level` page table and pinned. PageTypeError as the hypercall would fail."""
        if not 1 <= level <= 4:
            raise ValueError(f"no page-table level {level}")
        dom = self.domain(domid)
        dom.frames.pin(mfn, PGT_l1 + level - 1, domid)

    # -- memory -------------------------------------------------------------------------------------------
    def map_foreign(self, domid: int, mfn: int) -> memoryview:
        """dom0 mapping a guest frame (xenforeignmemory_map): a 4 KiB view of a frame the domain owns."""
        dom = self.domains.get(domid)
        if dom is None or not dom.frames.owned_by(mfn, domid):
            raise PermissionError(f"d{domid} does not own mfn {mfn:#x}")
        if mfn not in dom.foreign_mapped:
            # dom0's writable mapping holds a writable type reference (Xen's get_page_from_l1e for a foreign
            # frame), so the guest can never turn a frame dom0 writes into a page table.
            try:
                dom.frames.get_type(mfn, PGT_writable, domid)
            except PageTypeError as e:
                raise PermissionError(f"d{domid} mfn {mfn:#x} cannot be mapped writable: {e}") from None
            dom.foreign_mapped.add(mfn)      # dom0 holds it now: Xen would not free it under the mapping
        return dom.mem.frame(mfn)

    def map_grant_ref(self, domid: int, ref: int, readonly: bool = False) -> GrantMapping:
        """GNTTABOP_map_grant_ref as dom0 issues it for a backend: the frame `domid` granted to dom0 under
        `ref`. GrantError (with Xen's GNTST_* status) when the grant does not allow it."""
        dom = self.domains.get(domid)
        if dom is None:
            raise GrantError(-2, f"no domain {domid}")          # GNTST_bad_domain
        mfn = map_for_dom0(dom, ref, readonly)
        view = dom.mem.frame(mfn)
        return GrantMapping(domid, ref, readonly, mfn, view.toreadonly() if readonly else view)

    def unmap_grant_ref(self, mapping: GrantMapping) -> None:
        """GNTTABOP_unmap_grant_ref: the pin goes, and the mapping's view with it."""
        if mapping.view is None:
            raise ValueError(f"grant {mapping.ref} of d{mapping.domid} is not mapped")
        mapping.view.release()
        mapping.view = None
        dom = self.domains.get(mapping.domid)
        if dom is not None:
            unmap_for_dom0(dom, mapping.ref, mapping.readonly)

    def grant_copy(self, segments: "list[GrantCopySegment]") -> None:
        """GNTTABOP_copy issued by dom0 (xengnttab_grant_copy): each segment copied on its own, its status set
        as Xen's gnttab_copy sets it. A grant side is acquired as a mapping would be -- it must grant dom0
        access, read-only grants are not written, the frame must be the granter's (and writable: a writable
        type reference) -- for the duration of the copy only, which the guest never sees (it does not run
        meanwhile). A side reaching past the end of its page is GNTST_bad_copy_arg."""
        for seg in segments:
            seg.status = self._copy_one(seg)

    def _copy_one(self, seg: GrantCopySegment) -> int:
        n = seg.len
        if n < 0:
            return GNTST_bad_copy_arg
        held: list[tuple[Domain, int, bool]] = []
        try:
            views = []
            for side, writing in ((seg.source, False), (seg.dest, True)):
                if isinstance(side, GrantRef):
                    if not 0 <= side.offset <= _PAGE - n:
                        return GNTST_bad_copy_arg
                    dom = self.domains.get(side.domid)
                    if dom is None:
                        return -2                               # GNTST_bad_domain
                    try:
                        mfn = map_for_dom0(dom, side.ref, not writing, transient=True)
                    except GrantError as e:
                        return e.status
                    held.append((dom, mfn, not writing))
                    views.append(dom.mem.frame(mfn)[side.offset:side.offset + n])
                else:
                    if len(side) < n:
                        return GNTST_bad_copy_arg
                    views.append(memoryview(side)[:n])
            views[1][:] = views[0]
            return 0
        finally:
            for dom, mfn, readonly in held:
                release_transient(dom, mfn, readonly)

    def close(self) -> None:
        self.loop.close()
