"""The guest's own hardware breakpoints: DR0-3 enabled in DR7 fire as on the CPU Xen runs on.

Xen loads a PV vCPU's debug registers into the real CPU while DR7 enables any of them; the CPU's #DB is
reflected to the guest's trap table with the breakpoint bits merged into its %dr6 (x86_merge_dr6: B0-3
replaced, the rest accumulated). Unicorn has no debug registers, so they are modelled with bounded hooks,
as the gdb watchpoints are (hypervisor/debugger.py), installed only while a breakpoint is enabled:

- data breakpoints (R/W 01 write, 11 read or write; LEN 1, 2, 4 or 8 bytes, the address aligned down to the
  length) hook the machine addresses the linear range maps to through the vCPU's page tables when it is
  armed. A hit is a trap: #DB is delivered after the accessing instruction, before the next one runs (a
  per-instruction code hook exists only while a breakpoint is armed, so code runs ~50x slower then);
- instruction breakpoints (R/W 00) are faults: #DB at the instruction before it runs. The guest's return to
  it (with RF set on the CPU) does not fire again: the next instruction fetched there is let through once.
- I/O breakpoints (R/W 10) are refused by set_debugreg unless CR4.DE, as Xen refuses them; they are not
  modelled further (no I/O port reaches a domU).
Hooks are re-armed when DR0-3/DR7 change and at every run slice after the guest's page tables changed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE

from miniguest.abi.arch_x86 import TRAP_debug

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

PAGE = 4096
RW_EXEC, RW_WRITE, RW_IO, RW_ACCESS = 0, 1, 2, 3
LEN_BYTES = {0: 1, 1: 2, 3: 4, 2: 8}
DR6_BP_MASK = 0xF


def enabled(dr7: int) -> list[tuple[int, int, int]]:
    """(index, R/W type, length) of each breakpoint DR7 enables (L or G bit)."""
    out = []
    for i in range(4):
        if (dr7 >> (2 * i)) & 3:
            rw = (dr7 >> (16 + 4 * i)) & 3
            out.append((i, rw, LEN_BYTES[(dr7 >> (18 + 4 * i)) & 3]))
    return out


class HwBreakpoints:
    """The armed state of one vCPU's breakpoints (derived from vcpu.debugreg: not saved, re-armed)."""

    def __init__(self, vcpu: "Vcpu") -> None:
        self.vcpu = vcpu
        self.handles: list[int] = []
        self.code_handle = None
        self.exec_addrs: dict[int, int] = {}       # linear address -> breakpoint index
        self.pending = 0                           # data breakpoints hit by the instruction running now
        self.let_through = None                    # an instruction breakpoint's address, once
        self.armed_cr3 = None
        self.dirty = False

    def changed(self) -> None:
        """DR0-3/DR7 were written: re-arm before the guest runs on (from inside a hook: stop the slice)."""
        self.dirty = True
        self.vcpu.uc.emu_stop()

    def before_slice(self) -> None:
        if self.dirty or (self.handles or self.code_handle) and self.armed_cr3 != self.vcpu.aspace.cr3:
            self.arm()

    def disarm(self) -> None:
        uc = self.vcpu.uc
        had = bool(self.handles or self.code_handle is not None)
        for h in self.handles:
            uc.hook_del(h)
        self.handles = []
        if self.code_handle is not None:
            uc.hook_del(self.code_handle)
            self.code_handle = None
        self.exec_addrs = {}
        self.pending = 0
        if had:
            uc.ctl_flush_tb()

    def arm(self) -> None:
        self.disarm()
        self.dirty = False
        vcpu = self.vcpu
        regs = vcpu.debugreg
        bps = enabled(regs[7])
        self.armed_cr3 = vcpu.aspace.cr3
        if not bps:
            return
        uc = vcpu.uc
        for i, rw, length in bps:
            addr = regs[i] & ~(length - 1)
            if rw == RW_EXEC:
                self.exec_addrs[addr] = i
            elif rw in (RW_WRITE, RW_ACCESS):
                kinds = UC_HOOK_MEM_WRITE if rw == RW_WRITE else UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE
                pos, end = addr, addr + length
                while pos < end:
                    n = min(end - pos, PAGE - (pos & (PAGE - 1)))
                    t = vcpu.aspace.walk(pos)
                    if t is not None:
                        ma = t[0]
                        self.handles.append(uc.hook_add(kinds, self._on_mem, (i, ma, n), max(0, ma - 7),
                                                        ma + n - 1))
                    pos += n
        self.code_handle = uc.hook_add(UC_HOOK_CODE, self._on_code, None, 1, 0)
        uc.ctl_flush_tb()

    def _on_mem(self, uc, access: int, addr: int, size: int, value: int, data) -> None:
        i, ma, n = data
        if addr < ma + n and addr + size > ma:          # the hook range is widened for unaligned accesses
            self.pending |= 1 << i

    def _on_code(self, uc, addr: int, size: int, _: object) -> None:
        if self.pending:
            hits, self.pending = self.pending, 0
            self._deliver(hits, addr)
            return
        i = self.exec_addrs.get(addr)
        if i is None:
            return
        if self.let_through == addr:
            self.let_through = None                    # the return with RF: this execution goes ahead
            return
        self.let_through = addr
        self._deliver(1 << i, addr)

    def _deliver(self, hits: int, rip: int) -> None:
        """#DB to the guest: B bits replaced, the rest of %dr6 kept (x86_merge_dr6)."""
        vcpu = self.vcpu
        regs = vcpu.debugreg
        regs[6] = (regs[6] & ~DR6_BP_MASK) | hits
        vcpu.run_guarded(self._inject, rip)

    def _inject(self, rip: int) -> None:
        vcpu = self.vcpu
        vcpu.inject_exception(TRAP_debug, None, rip)
        vcpu.after_exception()
