"""A domain: its memory, vCPUs, event channels, timers and lifecycle, and the loop that runs it.

The run loop is single-threaded and deterministic. Each turn fires due timers, delivers pending events,
arms the clock's deadline (next timer, instruction budget), and runs the vCPU until something stops it: a
hook that blocks or shuts down, the clock, or a kick from another thread (pause, host input). When the vCPU
is blocked, virtual time jumps straight to the next timer; with no timer and nothing on the host that could
wake it, the domain is reported as hung instead of waiting forever.
"""
from __future__ import annotations

import logging
import random
import signal
import threading
import time
import traceback
import uuid as uuidlib
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from miniguest.abi.memory import E820_RAM
from miniguest.abi.sched import SHUTDOWN_NAMES, SHUTDOWN_crash
from miniguest.abi.xen import VMASST_TYPE_m2p_strict, VMASST_VALID_PV64
from miniguest.hypervisor.common.event_channel import EventChannels
from miniguest.hypervisor.common.grant_table import MAX_GRANT_FRAMES, GrantTable
from miniguest.hypervisor.common.sched import rearm_watchdog
from miniguest.hypervisor.common.time import set_wallclock, update_vcpu_time
from miniguest.hypervisor.common.timer import Timers
from miniguest.hypervisor.crash import Symbolizer, crash_report
from miniguest.hypervisor.hypercall import HypercallTable
from miniguest.hypervisor.intercept import FaultInjection, HypercallObserver, Interceptor, TraceSink
from miniguest.hypervisor.pv.hypercall import PV64_HYPERCALLS
from miniguest.hypervisor.ram import MachineMemory
from miniguest.hypervisor.save import Fields, StateError, latin1, pack_array, unlatin1, unpack_array
from miniguest.hypervisor.vclock import RealtimeClock, VirtualClock
from miniguest.hypervisor.vcpu import Vcpu
from miniguest.hypervisor.pv.descriptor_tables import check_descriptor
from miniguest.hypervisor.x86.page_types import (PGC_xen_heap, PGT_l1, PGT_l4, PGT_seg_desc, PGT_validated, FrameTable,
                                                 audit_domain)
from miniguest.hypervisor.x86.xen_area import XenArea, xen_frames_needed

if TYPE_CHECKING:
    from miniguest.hypervisor.common.event_channel import Dom0Evtchn
    from miniguest.hypervisor.host import Host

log = logging.getLogger("miniguest")

# Domain states.
CREATED = "created"
RUNNING = "running"
PAUSED = "paused"
SHUTDOWN = "shutdown"           # the guest asked (see shutdown_reason)
CRASHED = "crashed"             # Xen crashed it, or it asked with SHUTDOWN_crash
BUDGET = "budget"               # instruction budget exhausted
HUNG = "hung"                   # blocked with nothing that could ever wake it
STOPPED = "stopped"             # the host stopped it (Ctrl-C, API)
FINAL_STATES = frozenset({SHUTDOWN, CRASHED, BUDGET, HUNG, STOPPED})
SAVABLE_STATES = frozenset({CREATED, PAUSED}) | FINAL_STATES     # a running domain cannot be saved
# With host input possible (a terminal, a socket), run slices end at least this often (instructions) so
# the host side is serviced while a guest computes.
HOST_POLL_SLICE = 2_000_000
# Every run slice ends after at most this many instructions (~0.1 s of host time), so that Python gets
# control back -- for Ctrl-C, pause requests and host I/O -- even while a guest spins without ever making
# a hypercall. Ending a slice at a block boundary changes nothing the guest can observe.
MAX_SLICE = 50_000_000
MAX_MESSAGES = 1000


# Domains in run() on the main thread: what Ctrl-C stops.
_sigint_domains: list["Domain"] = []


def on_sigint(signum: int, frame: Any) -> None:
    """The SIGINT handler while a domain runs on the main thread: stop it at the next opportunity. Python
    runs a signal handler wherever the interpreter is -- inside a hook or the clock's callback called from
    C, where a KeyboardInterrupt would be swallowed or cut a hypercall in half -- so this one only asks;
    the run loop ends the domain as STOPPED. With no domain running it is Python's KeyboardInterrupt."""
    if not _sigint_domains:
        raise KeyboardInterrupt
    for d in list(_sigint_domains):
        d.interrupt()


@dataclass
class DomainConfig:
    name: str = "guest"
    memory_mib: int = 32
    cmdline: str = ""
    module: Optional[bytes] = None
    scramble_mfns: bool = False
    scramble_seed: int = 0x5EED
    max_instructions: Optional[int] = None
    max_time_ns: Optional[int] = None  # virtual time limit: an idle guest jumps ahead without instructions
    wallclock: tuple[int, int] = (1767225600, 0)       # 2026-01-01T00:00:00Z at system time 0
    uuid: Optional[str] = None
    max_evtchn_ports: int = 1023
    poison_memory: bool = False       # fill RAM with 0xA5 before building: catches code assuming zeroed RAM
    realtime: bool = False            # system time follows the host clock (not reproducible)
    max_memory_mib: Optional[int] = None   # xl's maxmem: the cap, with free machine frames up to it
    extra: dict[str, Any] = field(default_factory=dict)


class Domain:
    """One PV guest (Xen's struct domain). Created by Host.create_domain; the toolstack builds and boots it
    (toolstack.libxl.create_domain, or miniguest.Domain.from_elf)."""

    def __init__(self, config: DomainConfig, host: "Host", domid: int) -> None:
        self.config = config
        self.host = host
        self.domid = domid
        self.name = config.name
        self.uuid = config.uuid or str(uuidlib.UUID(int=random.Random(config.name).getrandbits(128), version=4))
        self.handle = uuidlib.UUID(self.uuid).bytes
        self.nr_pages = config.memory_mib * 256
        self.tot_pages = self.nr_pages
        # Room to balloon up to maxmem: free machine frames after Xen's own (so that the frame numbers of
        # everything else do not depend on maxmem); reservation hypercalls take them from there.
        # A maxmem below the memory is a cap the domain starts above (as after `xl mem-max`).
        max_pages = self.nr_pages if config.max_memory_mib is None else config.max_memory_mib * 256
        self.max_pages = max_pages
        first_xen = self.nr_pages + MAX_GRANT_FRAMES
        free_after = max(0, max_pages - self.nr_pages)
        nr_machine = first_xen + xen_frames_needed(first_xen, free_after) + free_after
        self.mem = MachineMemory(nr_machine)
        self.frames = FrameTable(self.mem)
        # pfn -> mfn. Scrambled: a fixed pseudo-random permutation, so pfn/mfn confusion shows up.
        if config.scramble_mfns:
            mfns = list(range(self.nr_pages))
            random.Random(config.scramble_seed).shuffle(mfns)
            self.p2m = array("Q", mfns)
            del mfns
        else:
            self.p2m = array("Q", range(self.nr_pages))
        self.frames.assign_range(0, self.nr_pages, self.domid)
        # Xen-heap pages shared with the domain (share_xen_page_with_guest): the grant-table frames and
        # shared_info, writable by the guest and never anything else.
        self.grants = GrantTable(list(range(self.nr_pages, self.nr_pages + MAX_GRANT_FRAMES)))
        self.xen = XenArea(self.mem, self.frames, first_xen)
        for mfn in self.grants.frames + [self.xen.shared_info_mfn]:
            self.frames.share_xen_page(mfn, self.domid)
        self.frames.install_xen_l4_slots = lambda mfn: self.xen.install_l4_slots(mfn, ro_mpt=self.m2p_strict)
        self.xen.fill_m2p(self.p2m)
        self._shared_info = self.mem.frame(self.xen.shared_info_mfn)
        self.hypercalls: HypercallTable = PV64_HYPERCALLS     # what the guest's hypercalls dispatch through
        self.events = EventChannels(self, config.max_evtchn_ports)
        self.timers = Timers()
        self.watchdogs: dict[int, int] = {}
        self.foreign_mapped: set[int] = set()     # frames dom0 maps (Host.map_foreign): the backends' rings
        self.vm_assist = 0
        self.pirq_eoi_mfn: Optional[int] = None   # PHYSDEVOP_pirq_eoi_gmfn: the guest's PIRQ EOI bitmap frame
        self.pirq_eoi_auto_unmask = False         # ... registered with v1
        self.vcpus: list["Vcpu"] = []
        self.clock: VirtualClock
        self.state = CREATED
        self.shutdown_reason: Optional[str] = None
        self.shutdown_code: Optional[int] = None
        self.crash_report: Optional[str] = None
        self.symbols: Optional[Symbolizer] = None     # names for crash reports (the toolstack's, from the ELF)
        # Hooks for the toolstack, tracing and tests.
        self.hv_console_sink: Callable[[bytes], None] = lambda data: None
        self.hv_console_input = bytearray()
        self.hypercall_observers: list[HypercallObserver] = []
        self.trace_sinks: list[TraceSink] = []
        self.fault_injector: Optional[FaultInjection] = None
        self.on_final: list[Callable[["Domain"], None]] = []
        self.on_idle: list[Callable[[], None]] = []
        # > 0 while host I/O may arrive for the guest from outside (a vif on a real network): an idle guest's
        # virtual time then advances no faster than real time (QEMU's icount sleep=on), so the timeouts it
        # arms while waiting for a reply see real latencies instead of expiring at once.
        self.idle_follows_host = 0
        self.messages: list[str] = []
        self._logged: set[Any] = set()
        self._pause_requested = threading.Event()
        self._interrupted = False
        # Which limit ended a BUDGET run: "instructions" (max_instructions) or "time" (max_time_ns).
        self.budget_exhausted: Optional[str] = None
        # Checks the toolstack adds (e.g. "waiting for console input that cannot come"): called once per turn
        # of the run loop; a reason string ends the run as HUNG with that reason (hang_reason).
        self.hang_checks: list[Callable[[], Optional[str]]] = []
        self.hang_reason: Optional[str] = None

    # -- construction -------------------------------------------------------------------------------------
    def create_vcpus(self, count: int = 1) -> None:
        """XEN_DOMCTL_max_vcpus: the vCPUs, the clock, and each vCPU's time record in its vcpu_info."""
        for i in range(count):
            self.vcpus.append(Vcpu(self, i))
        clock_type = RealtimeClock if self.config.realtime else VirtualClock
        self.clock = clock_type(self.vcpus[0].count_block)
        self.clock.attach(self.vcpus[0].uc)
        for vcpu in self.vcpus:
            update_vcpu_time(vcpu)

    def set_wallclock(self, sec: int, nsec: int) -> None:
        """The time of day at system time 0, in shared_info (what Xen's wallclock gives a guest)."""
        set_wallclock(self, sec, nsec)

    @property
    def dom0_evtchn(self) -> "Dom0Evtchn":
        return self.host.dom0_evtchn

    # -- shared info, time --------------------------------------------------------------------------------
    def shared_info_view(self) -> memoryview:
        return self._shared_info

    def tsc_of(self, now_ns: int) -> int:
        return now_ns                     # 1 GHz virtual TSC, starting at 0

    def set_m2p(self, mfn: int, pfn: int) -> None:
        self.xen.set_m2p(mfn, pfn)

    @property
    def m2p_strict(self) -> bool:
        """VMASST_TYPE_m2p_strict: the read-only M2P is kept out of guest user mode's page tables."""
        return bool(self.vm_assist & (1 << VMASST_TYPE_m2p_strict))

    def e820(self) -> list[tuple[int, int, int]]:
        return [(0, self.nr_pages * 4096, E820_RAM)]

    def symbolize(self, addr: Optional[int]) -> Optional[str]:
        """`name+0x1c` for a guest address, with the symbols the toolstack gave; None when unknown."""
        if addr is None or self.symbols is None:
            return None
        hit = self.symbols.lookup(addr)
        if hit is None:
            return None
        name, off = hit
        return f"{name}+{off:#x}" if off else name

    # -- hypervisor console -------------------------------------------------------------------------------
    def hv_console_write(self, data: bytes) -> None:
        self.emit("console", source="hypervisor", data=data)
        self.hv_console_sink(data)

    def hv_console_read(self, count: int) -> bytes:
        data = bytes(self.hv_console_input[:count])
        del self.hv_console_input[:count]
        return data

    # -- logging and tracing ------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if len(self.messages) >= MAX_MESSAGES:
            if len(self.messages) == MAX_MESSAGES:
                self.messages.append(f"(more than {MAX_MESSAGES} messages: the rest go to the log only)")
        else:
            self.messages.append(message)
        log.info("d%d: %s", self.domid, message)
        self.emit("log", message=message)

    def log_once(self, key: Any, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            self.log(message)

    def attach(self, listener: Interceptor) -> None:
        """Register a listener on every channel of the interception interface (intercept.py)."""
        self.hypercall_observers.append(listener)
        self.trace_sinks.append(listener.on_trace)
        self.events.on_raise.append(listener.on_event)

    def detach(self, listener: Interceptor) -> None:
        self.hypercall_observers.remove(listener)
        self.trace_sinks.remove(listener.on_trace)
        self.events.on_raise.remove(listener.on_event)

    def emit(self, kind: str, **fields: Any) -> None:
        if self.trace_sinks:
            for sink in self.trace_sinks:
                sink(kind, fields)

    def trace_exception(self, vcpu: "Vcpu", vector: int, error_code: Optional[int], rip: Optional[int],
                        cr2: Optional[int], software: bool = False) -> None:
        if self.trace_sinks:
            self.emit("exception", vcpu=vcpu.id, vector=vector, error_code=error_code, rip=rip, cr2=cr2,
                      software=software)

    def trace_upcall(self, vcpu: "Vcpu") -> None:
        if self.trace_sinks:
            self.emit("upcall", vcpu=vcpu.id)

    def trace_timer(self, vcpu: "Vcpu", why: str) -> None:
        if self.trace_sinks:
            self.emit("timer", vcpu=vcpu.id, timer=why)     # not `kind=`: that is emit's own argument

    def trace_privop(self, vcpu: "Vcpu", rip: int, insn: bytes) -> None:
        if self.trace_sinks:
            self.emit("privop", vcpu=vcpu.id, rip=rip, insn=insn)

    # -- lifecycle ----------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def shutdown(self, reason: int, vcpu: Optional["Vcpu"]) -> None:
        if self.finished:
            return
        self.shutdown_code = reason if self.shutdown_code is None else self.shutdown_code
        name = SHUTDOWN_NAMES.get(reason, f"reason {reason}")
        self.shutdown_reason = name
        self.state = CRASHED if reason == SHUTDOWN_crash else SHUTDOWN
        if reason == SHUTDOWN_crash and vcpu is not None:
            self.crash_report = crash_report(self, vcpu, "the guest asked to crash (SHUTDOWN_crash)")
        self.emit("shutdown", reason=name)
        self._stop_cpu(vcpu)

    def crash(self, why: str, vcpu: Optional["Vcpu"]) -> None:
        """Xen's domain_crash: the guest did something Xen cannot let it continue from."""
        if self.finished:
            return
        self.state = CRASHED
        self.shutdown_reason = "crash"
        self.crash_report = crash_report(self, vcpu, why)
        self.emit("crash", why=why)
        self._stop_cpu(vcpu)

    def internal_error(self, exc: BaseException, vcpu: Optional["Vcpu"]) -> None:
        """A bug in miniguest. The domain stops with a report; the traceback goes to the log, not the user."""
        log.debug("internal error", exc_info=exc)
        self.internal_traceback = "".join(traceback.format_exception(exc))
        self.crash(f"miniguest internal error: {type(exc).__name__}: {exc}", vcpu)

    def _stop_cpu(self, vcpu: Optional["Vcpu"]) -> None:
        for v in self.vcpus:
            v.uc.emu_stop()

    def pause(self) -> None:
        """Ask a running domain to pause at the next opportunity (safe from any thread): the CPU is kicked
        out of its run slice, or the loop is woken if it sleeps waiting for host I/O."""
        self._pause_requested.set()
        self.kick()
        if not self.host.loop.closed:
            self.host.loop.call_soon(lambda: None)

    def interrupt(self) -> None:
        """Stop the domain from the host (Ctrl-C): it ends as STOPPED at the next opportunity. Takes no lock
        and calls nothing that could: safe from a signal handler and from any thread."""
        self._interrupted = True
        self.kick()
        if not self.host.loop.closed:
            self.host.loop.wake()

    def kick(self) -> None:
        for v in self.vcpus:
            try:
                v.uc.emu_stop()
            except Exception:
                pass

    # -- the run loop -------------------------------------------------------------------------------------
    def run(self, until: Optional[Callable[["Domain"], bool]] = None) -> str:
        """Run until the domain reaches a final state (or `until(domain)` is true, or a pause request).
        Returns the state."""
        if self.finished:
            return self.state
        self.state = RUNNING
        self.host.loop.set_kick(self.kick)
        vcpu = self.vcpus[0]
        clock = self.clock
        budget = self.config.max_instructions
        max_time = self.config.max_time_ns
        main = threading.current_thread() is threading.main_thread()
        handler_installed = False
        if main:
            _sigint_domains.append(self)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, on_sigint)
                handler_installed = True
        try:
            while self.state == RUNNING:
                if self._interrupted:
                    self.state = STOPPED
                    break
                if self._pause_requested.is_set():
                    self._pause_requested.clear()
                    self.state = PAUSED
                    break
                if max_time is not None and clock.now_ns() >= max_time:
                    self._exhausted("time", f"virtual time limit of {max_time / 1e9:g} s reached")
                    break
                if self.hang_checks and self._hang_checked():
                    break
                self.timers.run_due(clock.now_ns())
                if vcpu.blocked:
                    if not self._idle(vcpu):
                        break
                    continue
                if until is not None and until(self):
                    self.state = PAUSED
                    break
                if vcpu.started:
                    # guarded: a bounce frame the guest's stack cannot take crashes the domain (Xen's
                    # create_bounce_frame -> domain_crash), here as inside a hypercall
                    vcpu.run_guarded(vcpu.deliver_events)
                    if self.state != RUNNING:
                        break
                deadline = self.timers.next_deadline()
                if budget is not None:
                    budget_ns = clock.idle_ns + budget
                    deadline = budget_ns if deadline is None else min(deadline, budget_ns)
                if max_time is not None:
                    deadline = max_time if deadline is None else min(deadline, max_time)
                limit = clock.now_ns() + (HOST_POLL_SLICE if self.host.loop.has_readers else MAX_SLICE)
                deadline = limit if deadline is None else min(deadline, limit)
                clock.set_deadline(deadline)
                vcpu.run_slice()
                clock.take_interrupt()
                if vcpu.pending_intercepts:
                    vcpu.install_intercepts()
                if self._interrupted and self.state == RUNNING:
                    self.state = STOPPED
                    break
                if budget is not None and clock.icount >= budget and self.state == RUNNING:
                    self._exhausted("instructions", f"instruction budget of {budget} exhausted")
                    break
                self.host.loop.poll(0)
        except KeyboardInterrupt:
            self.state = STOPPED
        finally:
            self.host.loop.set_kick(None)
            if main:
                _sigint_domains.remove(self)
                if handler_installed and signal.getsignal(signal.SIGINT) is on_sigint:
                    signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.finished:
            for cb in self.on_final:
                cb(self)
        return self.state

    def _exhausted(self, which: str, message: str) -> None:
        self.state = BUDGET
        self.budget_exhausted = which
        self.log(message)

    def _hang_checked(self) -> bool:
        for check in self.hang_checks:
            why = check()
            if why:
                self.state = HUNG
                self.hang_reason = why
                self.log(why)
                return True
        return False

    def _idle(self, vcpu: "Vcpu") -> bool:
        """The vCPU is blocked: advance virtual time to the next deadline, or wait for the host."""
        if vcpu.poll_deadline is not None and self.clock.now_ns() >= vcpu.poll_deadline:
            vcpu.unblock()
            return True
        deadline = self.timers.next_deadline()
        if vcpu.poll_deadline is not None:
            deadline = vcpu.poll_deadline if deadline is None else min(deadline, vcpu.poll_deadline)
        if deadline is not None and self.config.max_time_ns is not None:
            deadline = min(deadline, self.config.max_time_ns)     # never jump past the time limit
        if self.host.loop.poll(0):
            return True
        for cb in self.on_idle:
            cb()
        if not vcpu.blocked:
            return True                        # an idle hook gave it an event (a backend's late delivery)
        if deadline is not None:
            self.emit("idle", until=deadline)
            if self.clock.realtime:
                # Sleep on the host loop, so host input is serviced while we wait for the timer.
                self.host.loop.poll(max(0.0, (deadline - self.clock.now_ns()) / 1e9))
            elif self.idle_follows_host:
                start = time.monotonic()
                self.host.loop.poll(max(0.0, (deadline - self.clock.now_ns()) / 1e9))
                waited = int((time.monotonic() - start) * 1e9)
                self.clock.skip_to(min(deadline, self.clock.now_ns() + waited))
            else:
                self.clock.skip_to(deadline)
            return True
        if self.host.loop.has_readers:
            self.host.loop.poll(None)          # wait for host input (a socket client, a terminal)
            return True
        self.state = HUNG
        self.log("the guest is blocked with no timer armed and no event source that could wake it")
        return False

    def close(self) -> None:
        self.host.destroy_domain(self.domid)

    # -- saved state (hypervisor/save.py) -----------------------------------------------------------------
    # The binary sections save() writes beside its record.
    SAVED_SECTIONS = ("memory", *(f"frames.{name}" for name in FrameTable.SECTIONS), "p2m")
    SAVED_FIELDS = ("nr_pages", "tot_pages", "max_pages", "vm_assist")

    def check_frame(self, mfn: object, where: str, owned: bool = True) -> int:
        """A frame number read from a saved record: a machine frame of this domain (owned by it)."""
        if not isinstance(mfn, int) or isinstance(mfn, bool) or not 0 <= mfn < self.mem.nr_frames:
            raise StateError(f"{where} is not a machine frame of this domain")
        if owned and self.frames.owner[mfn] != self.domid:
            raise StateError(f"{where} is a frame the domain does not own")
        return mfn

    def save(self) -> tuple[dict, dict[str, bytes]]:
        """The domain's state as record parts ("domain", "clock", "timers", "events", "vcpus") and binary
        sections ("memory", "frames.*", "p2m"), each part saved by the object it describes."""
        if self.state not in SAVABLE_STATES:
            raise StateError(f"the domain is {self.state}: stop it first (run(until=...) or pause())")
        domain = {name: getattr(self, name) for name in self.SAVED_FIELDS}
        domain.update(self.grants.save())
        domain.update({"domid": self.domid, "nr_frames": self.mem.nr_frames, "state": self.state,
                       "shutdown_reason": self.shutdown_reason, "shutdown_code": self.shutdown_code,
                       "crash_report": self.crash_report, "messages": list(self.messages),
                       "logged": [_key_to_json(k) for k in sorted(self._logged, key=repr)],
                       "hv_console_input": latin1(self.hv_console_input), "watchdogs": sorted(self.watchdogs),
                       "xen_gdt_frames": self.xen.save_gdt(), "pirq_eoi_mfn": self.pirq_eoi_mfn,
                       "pirq_eoi_auto_unmask": self.pirq_eoi_auto_unmask})
        record = {"domain": domain, "clock": self.clock.save(), "timers": self.timers.save(),
                  "events": self.events.save(), "vcpus": [v.save() for v in self.vcpus]}
        sections = {"memory": self.mem.save(), "p2m": pack_array("Q", self.p2m)}
        sections.update({f"frames.{name}": raw for name, raw in self.frames.save().items()})
        return record, sections

    def expand_saved_memory(self, raw: bytes) -> bytes:
        """The full memory image of a saved "memory" section, for `restore` (a caller restoring the same
        save many times expands it once)."""
        return MachineMemory.expand_saved(raw, self.mem.nr_frames)

    def restore(self, record: Fields, sections: dict[str, bytes], memory_image: bytes) -> None:
        """Take back a save() into this domain, freshly built from the same configuration and kernel, with
        dom0's event channel ends bound again. `memory_image`: expand_saved_memory(sections["memory"])."""
        f = record.sub("domain")
        if f.int("domid") != self.domid:
            raise StateError(f"domain id {f.obj['domid']} cannot be given on this host (got {self.domid}): "
                             "restore into a new Host")
        n = self.mem.nr_frames
        if f.int("nr_frames") != n:
            raise StateError(f"{f.obj['nr_frames']} machine frames, this configuration gives {n}")
        # Xen's own frames (its page tables, the entry stub and stack, its GDT page, the zero page) are not the
        # file's to choose: the CPU runs Xen's stub at CPL 0 and loads descriptors through them.
        xen_frames = {mfn: bytes(self.mem.frame(mfn)) for mfn in self.xen.private_frames()}
        fresh_gdt = list(self.xen.gdt_frames)
        xen_heap = self.frames.frames_with_flag(PGC_xen_heap)
        max_pages = self.max_pages
        self.mem.restore(memory_image)
        for mfn, data in xen_frames.items():
            self._check_xen_frame(mfn, data)
        self.frames.restore({name: sections.get(f"frames.{name}") for name in FrameTable.SECTIONS}, self.domid)
        if self.frames.frames_with_flag(PGC_xen_heap) != xen_heap:
            raise StateError("frames.flags marks other frames as Xen-heap pages than this domain has")
        self._revalidate_restored_frames()
        for name in self.SAVED_FIELDS:
            setattr(self, name, f.int(name, 0, 1 << 40))
        if self.vm_assist & ~VMASST_MASK_PV64:
            raise StateError(f"domain.vm_assist {self.vm_assist:#x} enables assists Xen does not offer")
        if self.max_pages != max_pages:
            raise StateError(f"domain.max_pages {self.max_pages} differs from the configuration's {max_pages}")
        owned = sum(1 for o in self.frames.owner.tolist() if o == self.domid) - len(xen_heap)
        if owned != self.tot_pages or self.tot_pages > self.max_pages:
            raise StateError(f"domain.tot_pages {self.tot_pages} does not match the {owned} frames the domain "
                             f"owns (max_pages {self.max_pages})")
        self.grants.restore(f)
        p2m = unpack_array("Q", sections["p2m"], self.nr_pages, "p2m")
        owner = self.frames.owner
        if any(m != INVALID_P2M and (m >= n or owner[m] != self.domid) for m in p2m):
            raise StateError("the p2m maps frames outside the domain's memory")
        self.p2m = array("Q", p2m)
        state = f.str("state")
        if state not in SAVABLE_STATES:
            raise StateError(f"domain.state {state!r} is not a stopped state")
        self.state = state
        self.shutdown_reason = f.str("shutdown_reason", optional=True)
        self.shutdown_code = f.int("shutdown_code", 0, 255, optional=True)
        self.crash_report = f.str("crash_report", optional=True)
        messages = f.list("messages")
        if not all(isinstance(m, str) for m in messages):
            raise StateError("domain.messages must be strings")
        self.messages = list(messages)
        self._logged = {_key_from_json(k) for k in f.list("logged")}
        self.hv_console_input = bytearray(unlatin1(f.str("hv_console_input"), "domain.hv_console_input"))
        self.xen.restore_gdt(f.ints("xen_gdt_frames", 0, n - 1, 64), "domain.xen_gdt_frames")
        if f.has("pirq_eoi_mfn") and f.obj["pirq_eoi_mfn"] is not None:     # (absent or null: none)
            self.pirq_eoi_mfn = self.check_frame(f.obj["pirq_eoi_mfn"], "domain.pirq_eoi_mfn")
            self.pirq_eoi_auto_unmask = f.bool("pirq_eoi_auto_unmask")
        self.events.restore(record.sub("events"))
        vcpus = record.list("vcpus", 32)
        if len(vcpus) != len(self.vcpus):
            raise StateError(f"{len(vcpus)} vCPUs, the rebuilt domain has {len(self.vcpus)}")
        # The GDT mapping is Xen's: rebuilt from the vCPU's frames (pv_set_gdt); the file's list must agree.
        saved_gdt = list(self.xen.gdt_frames)
        self.xen.restore_gdt(fresh_gdt, "the rebuilt domain's GDT")
        for v, data in zip(self.vcpus, vcpus):
            v.restore(Fields(data, f"vcpus[{v.id}]"))
        if self.xen.gdt_frames != saved_gdt:
            raise StateError("domain.xen_gdt_frames do not map the vCPU's GDT frames")
        self.clock.restore(record.sub("clock"))          # after the vCPUs' re-entry, which counted
        self._restore_timers(record.list("timers", 1 << 16))
        for wid in f.ints("watchdogs", 1, 2, 2):
            self.watchdogs.setdefault(wid, -1)            # allocated, already fired: no timer left
        # The page-type state grants the guest its mappings: it must add up (every reference accounted for,
        # nothing the guest reaches maps a page table or a Xen frame writable) before the guest runs on it.
        problems = audit_domain(self)
        if problems:
            raise StateError(f"the page-type state does not add up: {problems[0]}")
        for v in self.vcpus:
            v.flush_tlb()

    def _check_xen_frame(self, mfn: int, fresh: bytes) -> None:
        """A restored frame of Xen's must hold what Xen wrote there; its page tables may differ only in the
        accessed/dirty bits the CPU sets (the guest can read the M2P's through a linear mapping, so they
        stay as saved). Xen's stack is Xen's scratch: it gets this build's start-of-day frame back."""
        view = self.mem.frame(mfn)
        if mfn == self.xen.stack_mfn:
            view[:] = fresh
            return
        saved = bytes(view)
        if saved == fresh:
            return
        xen = self.xen
        if mfn in (xen.pd_l3, xen.pd_l2, xen.pd_l1, xen.m2p_l3, xen.m2p_l2):
            a, b = array("Q", saved), array("Q", fresh)
            # (the per-domain L1's first 16 entries map the GDT: rewritten from the vCPU's frames on restore)
            skip = 16 if mfn == xen.pd_l1 else 0
            if all((x ^ y) & ~0x60 == 0 for x, y in zip(a[skip:], b[skip:])):
                return
        raise StateError(f"Xen's frame {mfn:#x} does not hold what Xen wrote there")

    def _revalidate_restored_frames(self) -> None:
        """What a file cannot be trusted with in the frame table, before anything runs on it: every referenced
        L4 gets Xen's slots as Xen's validation writes them (only the M2P slot's presence is the guest's, by
        m2p_strict); every referenced descriptor page holds only descriptors Xen's check_descriptor would have
        stored; a page table nobody references loses PGT_validated, so its next use validates it again. Whether the
        references add up is the audit's (at the end of restore)."""
        frames = self.frames
        types, counts = frames.type.tolist(), frames.count.tolist()
        for mfn in range(frames.nr_frames):
            if not counts[mfn]:
                if PGT_l1 <= types[mfn] <= PGT_l4:      # (Xen devalidates a table losing its last reference)
                    frames.flags[mfn] &= ~PGT_validated & 0xFF
            elif types[mfn] == PGT_l4:
                self.xen.install_l4_slots(mfn, ro_mpt=bool(self.mem.read_u64((mfn << 12) + 256 * 8)))
            elif types[mfn] == PGT_seg_desc:
                base = mfn << 12
                for i in range(512):
                    d = self.mem.read_u64(base + 8 * i)
                    if check_descriptor(d) != d:
                        raise StateError(f"descriptor page {mfn:#x} entry {i} holds a descriptor Xen's "
                                         "check_descriptor refuses or would change")

    def _restore_timers(self, items: list) -> None:
        self.watchdogs = {}
        for v in self.vcpus:
            v.timer.forget_armed()
        nr_vcpus = len(self.vcpus)

        def vcpu_timer(what: str):
            def rearm(saved: Fields, deadline: int) -> None:
                self.vcpus[saved.int("vcpu", 0, nr_vcpus - 1)].timer.rearm(what, deadline)
            return rearm

        self.timers.restore(items, {"singleshot": vcpu_timer("singleshot"), "periodic": vcpu_timer("periodic"),
                                    "watchdog": lambda saved, deadline: rearm_watchdog(self, saved, deadline),
                                    "delayed_event": self.events.rearm_delayed})


INVALID_P2M = (1 << 64) - 1
VMASST_MASK_PV64 = sum(1 << t for t in VMASST_VALID_PV64)     # Xen's arch_vm_assist_valid_mask for PV


def _key_to_json(key: Any) -> Any:
    """log_once keys (tuples of str/int) as JSON; others as their repr (then they may log once more)."""
    if isinstance(key, tuple):
        return {"t": [_key_to_json(k) for k in key]}
    if isinstance(key, (str, int, bool)) or key is None:
        return key
    return repr(key)


def _key_from_json(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("t"), list):
        return tuple(_key_from_json(v) for v in value["t"])
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    raise StateError("domain.logged holds an unexpected key")
