"""What a debugger needs from the CPU: breakpoints, watchpoints, single-step, and why the guest stopped.

Protocol-agnostic (the gdb remote stub in miniguest/debug/gdbstub.py drives it) and free until used: a
domain nobody debugs never creates one, and nothing here adds a per-instruction or per-block hook to the
normal path. Everything runs on the domain's thread, between or inside run slices of `Domain.run`.

How each piece is built on Unicorn 2.1 (facts measured for this code; numbers from tools/bench_gdb.py):

- Breakpoints (gdb's Z0 software and Z1 hardware kinds alike, and internal ones: the stop at the first
  guest instruction, `catch hypercall`) are UC_HOOK_CODE hooks bounded to one address (begin = end),
  which cost nothing anywhere else. Unicorn decides when it translates a block which instructions call
  hooks and bakes the hook's address into the block: a hook added later is ignored by blocks translated
  before, and a deleted hook's memory is still called by them (measured: a stale block called the next
  hook allocated at the same address, at the wrong guest address). So every insertion and removal
  invalidates the translated blocks covering that address, and the callback checks the address again.
- Single-step: a temporary UC_HOOK_CODE over all addresses whose first call is the stepped instruction
  and whose second call stops the CPU before the next one executes. The alternative, `emu_start(count=1)`,
  has the same cost structure without its benefits: Unicorn 2.1.4 only counts in blocks translated after
  its internal count hook appeared (measured: a "step" on warm code ran 1.5 G instructions), so it needs
  the same flush of translated code on entry, and it flushes again when uncounted runs resume; it would
  also need a count parameter in the vCPU's run slice, and it cannot tell whether a slice ended before its
  instruction (a clock deadline, an I/O intercept being installed) or after it. The hook's first call says
  exactly that. The hook stays installed across consecutive steps (stepping through code costs two Python
  calls per instruction and no flush) and is removed, with one flush, before the guest runs freely.
  While stepping, event delivery is held (`Vcpu.hold_events`, like QEMU's single-step IRQ mask), so an
  upcall never hijacks a step; an exception raised by the instruction is entered, as the hardware's trap
  flag would. Stepping the `syscall` in the hypercall page runs the whole hypercall as one instruction
  (if it blocks, the step ends once the vCPU wakes up).
- Watchpoints: UC_HOOK_MEM_WRITE / UC_HOOK_MEM_READ bounded to the machine (physical) addresses the
  watched virtual range maps to when it is inserted -- Unicorn's memory hooks see physical addresses.
  Memory hooks slow memory-heavy guest code (~1.4x) while any watchpoint exists, and only then. A hook
  runs before the access completes; stopping there leaves RIP on the instruction with its registers
  rolled back but a store already in memory. So the hit is completed the way QEMU does it: undo the store,
  then execute that one instruction again (a single-step with watchpoints ignored), and report the stop
  after it, as x86 debug registers report a data breakpoint (a trap, RIP past the access).
- Stops: a breakpoint or an interrupt request pauses the domain (Domain.pause, the path a host pause
  takes; from inside a code hook it stops before the instruction). Single-step and watchpoint completion
  are decided by the `until` check Domain.run makes between slices.

Virtual time: the clock counts a translated block when it is entered, so a stop in the middle of a block
would leave the rest of the block counted but not run, and running it after the stop would count it again.
At a breakpoint or watchpoint stop the count is rewound to the stopping instruction (the clock records
where the running block started), and a single-step counts exactly one instruction unless a timer fired
meanwhile (time never runs backwards past what the guest may have seen). So breakpoints, watchpoints and
steps leave a run instruction-for-instruction identical to a run without a debugger; an interrupt (Ctrl-C)
stops between slices, where the clock is already exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE, Uc

from miniguest.abi.arch_x86 import PAGE_SIZE
from miniguest.hypervisor.disasm import describe_insn, disassemble, read_code  # noqa: F401  (public, below)
from miniguest.hypervisor.ram import GuestFault
from miniguest.hypervisor.pv.emul_priv_op import count_block_instructions

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.vcpu import Vcpu

# Reading and disassembling guest code through its page tables (disasm.py) is part of this interface too:
# describe_insn, disassemble, read_code.
__all__ = ["DebugSupport", "DebugError", "StopEvent", "describe_insn", "disassemble", "read_code"]

# Breakpoint owners. Z0 and Z1 are gdb's software and hardware kinds; the others are internal.
BP_SOFTWARE = "sw"
BP_HARDWARE = "hw"
BP_CATCH = "catch"
BP_ENTRY = "entry"
USER_BP_KINDS = (BP_SOFTWARE, BP_HARDWARE, BP_CATCH)

# Watchpoint kinds, as gdb names them in stop replies.
WATCH_WRITE = "watch"
WATCH_READ = "rwatch"
WATCH_ACCESS = "awatch"
WATCH_KINDS = (WATCH_WRITE, WATCH_READ, WATCH_ACCESS)
MAX_WATCH_LENGTH = 0x10000
# Unicorn checks a memory hook's bounds against the first byte of an access only; widen each hook by the
# largest ordinary access (16 bytes, SSE) and test the overlap in the callback.
_WIDEST_ACCESS = 16

# Stop reasons.
STOP_BREAKPOINT = "breakpoint"
STOP_WATCHPOINT = "watchpoint"
STOP_STEP = "step"
STOP_INTERRUPT = "interrupt"
STOP_ENTRY = "entry"
STOP_CATCH = "catch"


class DebugError(Exception):
    """A debugger request the guest's state cannot satisfy (an unmapped watch range, ...)."""


@dataclass
class StopEvent:
    """Why the guest stopped. `addr`: the breakpoint address, or the watched address that was accessed."""
    reason: str
    vcpu: int = 0
    addr: Optional[int] = None
    kind: Optional[str] = None          # BP_* for breakpoints, WATCH_* for watchpoints
    detail: str = ""


@dataclass
class _Breakpoint:
    addr: int
    owners: set[str] = field(default_factory=set)
    handles: list[tuple["Vcpu", int]] = field(default_factory=list)
    catch_label: str = ""


@dataclass
class _Watchpoint:
    kind: str
    va: int
    length: int
    ranges: list[tuple[int, int, int]]        # (machine address, length, va) per page piece
    handles: list[tuple["Vcpu", int]] = field(default_factory=list)


@dataclass
class _Resume:
    """State of one resume (continue or step) while Domain.run is inside it."""
    step: bool                          # gdb asked for one instruction
    vcpu: "Vcpu"
    stop: Optional[StopEvent] = None
    stepping: bool = False              # the step hook is armed for one instruction
    executed: bool = False              # ... and that instruction has started
    step_icount: int = 0
    step_deadline: Optional[int] = None
    step_idle: int = 0
    watch_hit: Optional[StopEvent] = None
    watch_fixup: bool = False           # the hit's instruction is being executed again, alone
    undo: list[tuple[int, bytes]] = field(default_factory=list)


class DebugSupport:
    """The debugger's handle on one domain. Create it before the first run to stop at the entry point."""

    def __init__(self, domain: "Domain") -> None:
        self.domain = domain
        self.breakpoints: dict[int, _Breakpoint] = {}
        self.watchpoints: list[_Watchpoint] = []
        self._resume: Optional[_Resume] = None
        self._step_hooks: dict[int, int] = {}         # vcpu id -> handle of the global step hook
        self._watch_suppressed = False

    # -- breakpoints --------------------------------------------------------------------------------------
    def insert_breakpoint(self, addr: int, kind: str = BP_SOFTWARE, label: str = "") -> None:
        addr &= (1 << 64) - 1
        bp = self.breakpoints.get(addr)
        if bp is None:
            bp = self.breakpoints[addr] = _Breakpoint(addr)
            for vcpu in self.domain.vcpus:
                bp.handles.append((vcpu, vcpu.uc.hook_add(UC_HOOK_CODE, self._on_code, None, addr, addr)))
                self._invalidate(vcpu, addr, 1)
        bp.owners.add(kind)
        if kind == BP_CATCH:
            bp.catch_label = label

    def remove_breakpoint(self, addr: int, kind: str = BP_SOFTWARE) -> bool:
        bp = self.breakpoints.get(addr & ((1 << 64) - 1))
        if bp is None or kind not in bp.owners:
            return False
        bp.owners.discard(kind)
        if not bp.owners:
            del self.breakpoints[bp.addr]
            for vcpu, handle in bp.handles:
                vcpu.uc.hook_del(handle)
                self._invalidate(vcpu, bp.addr, 1)
        return True

    def has_breakpoint(self, addr: int, kinds: tuple[str, ...] = USER_BP_KINDS) -> bool:
        bp = self.breakpoints.get(addr)
        return bp is not None and any(k in bp.owners for k in kinds)

    @staticmethod
    def _invalidate(vcpu: "Vcpu", addr: int, length: int) -> None:
        """Drop translated blocks covering [addr, addr+length): Unicorn decides at translation which hooks a
        block calls. Unicorn finds the blocks through the current page tables; an address they do not map
        may still have blocks from other page tables (guest user mode): then flush everything."""
        if vcpu.aspace.walk(addr) is None or vcpu.aspace.walk(addr + length - 1) is None:
            vcpu.uc.ctl_flush_tb()
            return
        vcpu.uc.ctl_remove_cache(addr, addr + length)

    def _on_code(self, uc: Uc, addr: int, size: int, _: object) -> None:
        bp = self.breakpoints.get(addr)
        r = self._resume
        if bp is None or r is None:
            return                  # a stale translated block (see the module docstring)
        if r.stepping:
            return                  # the instruction being stepped, or the next one: the step stops there
        kind = next((k for k in (BP_SOFTWARE, BP_HARDWARE, BP_CATCH, BP_ENTRY) if k in bp.owners), None)
        if kind is None:
            return
        vcpu = self._vcpu_of(uc) or r.vcpu
        reason = {BP_CATCH: STOP_CATCH, BP_ENTRY: STOP_ENTRY}.get(kind, STOP_BREAKPOINT)
        r.stop = StopEvent(reason, vcpu.id, addr, kind, bp.catch_label if kind == BP_CATCH else "")
        self.domain.pause()          # from a code hook this stops before the instruction

    def _vcpu_of(self, uc: Uc) -> Optional["Vcpu"]:
        for v in self.domain.vcpus:
            if v.uc is uc:
                return v
        return None

    # -- watchpoints --------------------------------------------------------------------------------------
    def insert_watchpoint(self, kind: str, va: int, length: int, vcpu: Optional["Vcpu"] = None) -> None:
        if kind not in WATCH_KINDS:
            raise ValueError(f"unknown watchpoint kind {kind!r}")
        if not 0 < length <= MAX_WATCH_LENGTH:
            raise ValueError(f"watchpoint length {length} out of range")
        vcpu = vcpu or self.domain.vcpus[0]
        ranges = []
        pos, end = va, va + length
        while pos < end:
            t = vcpu.aspace.walk(pos)
            if t is None:
                raise DebugError(f"cannot watch {pos:#x}: not mapped")
            n = min(end - pos, PAGE_SIZE - (pos & (PAGE_SIZE - 1)))
            ranges.append((t[0], n, pos))
            pos += n
        wp = _Watchpoint(kind, va, length, ranges)
        types = {WATCH_WRITE: UC_HOOK_MEM_WRITE, WATCH_READ: UC_HOOK_MEM_READ,
                 WATCH_ACCESS: UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE}[kind]
        for v in self.domain.vcpus:
            for ma, n, _ in ranges:
                handle = v.uc.hook_add(types, self._on_mem, wp, max(0, ma - _WIDEST_ACCESS + 1), ma + n - 1)
                wp.handles.append((v, handle))
            v.uc.ctl_flush_tb()
        self.watchpoints.append(wp)

    def remove_watchpoint(self, kind: str, va: int, length: int) -> bool:
        for wp in self.watchpoints:
            if (wp.kind, wp.va, wp.length) == (kind, va, length):
                self.watchpoints.remove(wp)
                vcpus = set()
                for v, handle in wp.handles:
                    v.uc.hook_del(handle)
                    vcpus.add(v)
                for v in vcpus:
                    v.uc.ctl_flush_tb()       # blocks translated with the hook must go (and regain speed)
                return True
        return False

    def _on_mem(self, uc: Uc, access: int, addr: int, size: int, value: int, wp: _Watchpoint) -> None:
        r = self._resume
        if self._watch_suppressed or r is None or r.watch_hit is not None or wp not in self.watchpoints:
            return
        for ma, n, va in wp.ranges:
            if addr < ma + n and addr + size > ma:
                hit_va = va + max(0, addr - ma)
                break
        else:
            return                  # the widened hook range: an access just below the watched bytes
        vcpu = self._vcpu_of(uc) or r.vcpu
        if access == UC_MEM_WRITE:
            # The hook runs before the store; the stop below rolls the instruction back but not the store.
            mv = self.domain.mem.mv
            r.undo.append((addr, bytes(mv[addr:addr + size])))
        r.watch_hit = StopEvent(STOP_WATCHPOINT, vcpu.id, hit_va, wp.kind)
        r.executed = False          # if stepping: the instruction runs again (_until)
        vcpu.hold_events = True     # nothing may run between the rollback and the re-execution
        uc.emu_stop()

    def _undo_stores(self, r: _Resume) -> None:
        mv = self.domain.mem.mv
        for ma, old in reversed(r.undo):
            mv[ma:ma + len(old)] = old
        r.undo = []

    # -- single-step --------------------------------------------------------------------------------------
    def _arm_step(self, r: _Resume) -> None:
        vcpu = r.vcpu
        if vcpu.id not in self._step_hooks:
            self._step_hooks[vcpu.id] = vcpu.uc.hook_add(UC_HOOK_CODE, self._on_step, None, 1, 0)
            vcpu.uc.ctl_flush_tb()      # blocks translated before the hook would not call it
        r.stepping, r.executed = True, False
        r.step_icount = self.domain.clock.icount
        r.step_idle = self.domain.clock.idle_ns
        r.step_deadline = self.domain.timers.next_deadline()
        vcpu.hold_events = True

    def _drop_step_hooks(self) -> None:
        """Before the guest runs freely: remove the global step hook and the blocks translated with it."""
        for vcpu in self.domain.vcpus:
            handle = self._step_hooks.pop(vcpu.id, None)
            if handle is not None:
                vcpu.uc.hook_del(handle)
                vcpu.uc.ctl_flush_tb()

    def _on_step(self, uc: Uc, addr: int, size: int, _: object) -> None:
        r = self._resume
        if r is None or not r.stepping:
            return                  # armed for a later step, or a stale block
        if not r.executed:
            r.executed = True       # the stepped instruction is about to run
            return
        uc.emu_stop()               # the next one: stop before it

    # -- running ------------------------------------------------------------------------------------------
    def request_interrupt(self) -> None:
        """Stop the running guest at the next instruction boundary (gdb's Ctrl-C). Domain thread only."""
        self.domain.pause()

    def run_to_entry(self) -> Optional[StopEvent]:
        """Run Xen's entry stub (the `iretq` to CPL3) and stop before the guest's first instruction. The
        stub is one instruction: a single-step lands on the entry without executing it and leaves virtual
        time exactly where a boot without a debugger has it. A vCPU that already runs the guest (a restored
        snapshot) is simply stopped where it is."""
        vcpu = self.domain.vcpus[0]
        if vcpu.started:
            return StopEvent(STOP_INTERRUPT, vcpu.id)
        stop = self.resume(step=True)
        return stop and StopEvent(STOP_ENTRY, vcpu.id, vcpu.rip, BP_ENTRY)

    def resume(self, step: bool, vcpu: Optional["Vcpu"] = None) -> Optional[StopEvent]:
        """Continue (or execute one instruction of) the guest until something stops it. Returns the stop,
        or None when the domain reached a final state (shut down, crashed, ...)."""
        if self.domain.finished:
            return None
        vcpu = vcpu or self.domain.vcpus[0]
        r = self._resume = _Resume(step, vcpu)
        # Resuming from a breakpoint: execute its instruction first (gdb steps over its own breakpoints
        # itself; other clients and internal stops rely on this).
        if step or self.has_breakpoint(vcpu.rip, USER_BP_KINDS + (BP_ENTRY,)):
            self._arm_step(r)
        else:
            self._drop_step_hooks()
        try:
            self.domain.run(until=self._until)
        finally:
            if r.watch_hit is not None and not r.watch_fixup:
                self._undo_stores(r)        # interrupted before the hit was completed: as if not reached
                self._rewind_clock(vcpu)
            self._resume = None
            vcpu.hold_events = False
            self._watch_suppressed = False
        if self.domain.finished:
            return None
        if r.stop is not None and r.stop.reason in (STOP_BREAKPOINT, STOP_CATCH, STOP_ENTRY):
            self._rewind_clock(self.domain.vcpus[r.stop.vcpu])
        return r.stop or StopEvent(STOP_INTERRUPT, vcpu.id)

    def _until(self, domain: "Domain") -> bool:
        """Domain.run's check between slices: complete watchpoint hits and single-steps."""
        r = self._resume
        if r is None:
            return False
        if r.watch_hit is not None and not r.watch_fixup:
            # A watched access rolled its instruction back: undo its store, run it once more on its own.
            self._undo_stores(r)
            self._rewind_clock(r.vcpu)
            r.watch_fixup = True
            self._watch_suppressed = True
            self._arm_step(r)
            return False
        if not (r.stepping and r.executed):
            return False
        self._finish_step(r)
        if r.watch_fixup:
            self._watch_suppressed = False
            r.stop = r.watch_hit
            return True
        if r.step:
            r.stop = StopEvent(STOP_STEP, r.vcpu.id)
            return True
        r.vcpu.hold_events = False           # stepped off a breakpoint: now run freely
        self._drop_step_hooks()
        return False

    def _rewind_clock(self, vcpu: "Vcpu") -> None:
        """The CPU stopped inside the block it was running, before the instruction at RIP: take back the
        part of the block the clock counted on entry but that did not run."""
        clock = self.domain.clock
        now_at = getattr(clock, "now_at", None)
        if now_at is None:
            return

        def between(start: int, end: int) -> int:
            if end <= start:
                return 0
            return count_block_instructions(vcpu.aspace.read(start, end - start), start)[0]
        try:
            at = now_at(vcpu.rip, between) - clock.idle_ns
        except GuestFault:
            return
        if 0 <= at < clock.icount:
            clock.icount = at

    def _finish_step(self, r: _Resume) -> None:
        r.stepping = False
        clock = self.domain.clock
        # One instruction is one nanosecond: take back the rest of the block the clock counted, unless a
        # timer fired or the vCPU idled meanwhile (time must not run backwards past what the guest saw).
        if (clock.idle_ns == r.step_idle and self.domain.timers.next_deadline() == r.step_deadline
                and clock.icount > r.step_icount + 1):
            clock.icount = r.step_icount + 1
