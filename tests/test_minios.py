"""The minios sample: a Mini-OS-shaped guest booted through the public API and the CLI.

What a user sees (the console transcript, the exit status) and what the guest did to the hypervisor's state
(its page tables, pinned frames, the per-CPU GS base), checked against the domain the toolstack built, so
that a change in either the firmware or the hypervisor that breaks Mini-OS's boot path shows up here.
"""
from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from guestlib import HypercallRecorder
from miniguest import Domain, samples
from miniguest.hypervisor import domain as D

MINIOS = samples.path("minios")
PAGE = 4096
_PAGE_RW = 2
T_LINE = re.compile(r"^T\(s=(\d+) us=(\d+)\)$", re.M)


def boot(cmdline: str = "", **options: Any) -> tuple[Domain, HypercallRecorder]:
    assert MINIOS is not None, "minios.elf is not shipped"
    dom = Domain.from_elf(MINIOS, cmdline=cmdline, **options)
    rec = HypercallRecorder()
    dom.hypercall_observers.append(rec)
    dom.run()
    return dom, rec


@pytest.fixture(scope="module")
def default_run() -> tuple[Domain, HypercallRecorder]:
    return boot()


def test_registered_as_sample() -> None:
    assert "minios" in samples.SAMPLES and MINIOS is not None


def test_transcript_start_of_day(default_run: tuple[Domain, HypercallRecorder]) -> None:
    dom, _ = default_run
    text = dom.console.text
    layout = dom.layout
    lines = text.splitlines()
    assert lines[0] == "Bootstrapping..."
    assert lines[1] == "Xen Minimal OS!"
    # The banner reports what the domain builder really gave the guest.
    assert f"  start_info: {layout.start_info:#x}(VA)" in lines
    assert f"    nr_pages: {dom.nr_pages:#x}" in lines
    assert f"  shared_inf: 0x{dom.xen.shared_info_mfn * PAGE:08x}(MA)" in lines
    assert f"     pt_base: {layout.pt_base:#x}(VA)" in lines
    assert f"nr_pt_frames: {layout.nr_pt_frames:#x}" in lines
    assert f"    mfn_list: {layout.p2m_start:#x}(VA)" in lines
    assert "    cmd_line: " in lines
    # Memory: everything from the page after the bootstrap tables up to the end of RAM gets mapped.
    first_free = layout.pfn(layout.pt_base) + layout.nr_pt_frames
    assert f"  start_pfn: {first_free:x}" in lines
    assert f"    max_pfn: {dom.nr_pages:x}" in lines
    assert f"Mapping memory range {first_free * PAGE:#x} - {dom.nr_pages * PAGE:#x}" in lines
    assert "skipped 0x1000" in lines                     # shared_info is in text but must stay writable
    for expected in ("MM: done", "Initialising timer interface", "Initialising console ... done.",
                     "gnttab_table mapped at 0x8000000000.", "Initialising scheduler",
                     "Periodic thread started.", "Periodic thread done after 3 ticks: powering off."):
        assert expected in lines, expected


def test_every_line_once(default_run: tuple[Domain, HypercallRecorder]) -> None:
    """Early lines go to console_io and the ring; the user must see each exactly once: the merged console is
    the emergency console's "Bootstrapping..." followed by exactly what the guest put on its ring."""
    dom, _ = default_run
    lines = dom.console.text.splitlines()
    ring = bytes(dom.console.raw["ring"]).decode().replace("\r\n", "\n").splitlines()
    assert lines == ["Bootstrapping..."] + ring
    banner = lines[:lines.index("MM: Init")]
    assert len(banner) == len(set(banner))
    # Mini-OS sends "\r\n" on the ring, plain "\n" to console_io.
    assert b"Xen Minimal OS!\r\n" in dom.console.raw["ring"]
    assert b"Xen Minimal OS!\n" in dom.console.raw["hypervisor"]
    assert b"T(s=" not in dom.console.raw["hypervisor"]  # after init_console: the ring only
    assert b"Bootstrapping...\n" not in dom.console.raw["ring"]


def test_periodic_lines_and_poweroff(default_run: tuple[Domain, HypercallRecorder]) -> None:
    dom, _ = default_run
    ticks = [(int(s), int(us)) for s, us in T_LINE.findall(dom.console.text)]
    assert len(ticks) == 3
    wc_sec = dom.config.wallclock[0]
    times = [s * 1_000_000 + us for s, us in ticks]
    assert ticks[0][0] == wc_sec                        # virtual time starts at the configured wallclock
    for a, b in zip(times, times[1:]):
        assert 1_000_000 <= b - a < 1_010_000           # msleep(1000) in virtual time, small overhead
    assert dom.state == D.SHUTDOWN and dom.shutdown_reason == "poweroff"


def test_boot_path_hypercalls(default_run: tuple[Domain, HypercallRecorder]) -> None:
    dom, rec = default_run
    from miniguest.abi import xen as X
    names = [nr for nr, _, _ in rec.calls]
    # arch_init: console_io first, then the trap table and callbacks, then shared_info mapped.
    assert names[:4] == [X.HYPERVISOR_console_io, X.HYPERVISOR_set_trap_table, X.HYPERVISOR_set_callbacks,
                         X.HYPERVISOR_update_va_mapping]
    va, pte, _ = rec.calls[3][1][:3]
    assert va % PAGE == 0 and pte >> 12 == dom.xen.shared_info_mfn
    # Page 0 is unmapped with update_va_mapping(0, 0, ...).
    assert any(args[0] == 0 and args[1] == 0 for _, args, r in rec.of(X.HYPERVISOR_update_va_mapping) if r == 0)
    assert all(r == 0 for nr, _, r in rec.calls if nr in (X.HYPERVISOR_mmu_update, X.HYPERVISOR_mmuext_op))
    # Returns from upcalls are native iretq (kernel -> kernel): never the iret hypercall.
    assert not rec.of(X.HYPERVISOR_iret)


def test_page_tables_after_init_mm(default_run: tuple[Domain, HypercallRecorder]) -> None:
    dom, _ = default_run
    vcpu = dom.vcpus[0]
    aspace = vcpu.aspace
    assert aspace.walk(0) is None                                     # NULL page unmapped
    text = dom.symbols.address_of("hypercall_page")
    assert text is not None and not aspace.walk(text)[1] & _PAGE_RW  # text read-only
    last = (dom.nr_pages - 1) * PAGE
    ma, flags = aspace.walk(last)                                     # all RAM mapped 1:1, writable
    assert ma >> 12 == dom.p2m[dom.nr_pages - 1] and flags & _PAGE_RW
    # The L1s new_pt_frame made are pinned, and so are the L3/L2/L1 behind the grant table mapping.
    pinned = len(dom.frames.pinned_frames())
    assert pinned >= 1 + (dom.nr_pages * PAGE - dom.layout.virt_pgtab_end) // (2 << 20) + 3
    gnt = aspace.walk(0x8000000000)
    assert gnt is not None and gnt[0] >> 12 == dom.grants.frames[0]
    shared = dom.symbols.address_of("shared_info")
    assert aspace.walk(shared)[0] >> 12 == dom.xen.shared_info_mfn


def test_gs_base_points_at_the_per_cpu_area(default_run: tuple[Domain, HypercallRecorder]) -> None:
    """init_events writes MSR_GS_BASE with wrmsr (emulated): the upcall path relies on %gs:0/%gs:8."""
    dom, _ = default_run
    pda = dom.symbols.address_of("cpu0_pda")
    assert pda is not None and dom.vcpus[0].uc.msr_read(0xC0000101) == pda


def test_two_runs_are_identical() -> None:
    a, ra = boot()
    b, rb = boot()
    assert bytes(a.console.merged) == bytes(b.console.merged)
    assert ra.calls == rb.calls and len(ra.calls) > 100


def test_scrambled_mfns() -> None:
    """pfn != mfn everywhere: every mfn/pfn conversion in the guest's page-table code must be right."""
    dom, _ = boot(scramble_mfns=True, cmdline="ticks=1")
    assert dom.state == D.SHUTDOWN and dom.shutdown_reason == "poweroff", dom.crash_report
    assert len(T_LINE.findall(dom.console.text)) == 1


@pytest.mark.parametrize("mib", [8, 96])
def test_memory_sizes(mib: int) -> None:
    dom, _ = boot(memory_mib=mib, cmdline="ticks=1")
    assert dom.state == D.SHUTDOWN, dom.crash_report
    assert f"    nr_pages: {mib * 256:#x}" in dom.console.text.splitlines()


def test_cmdline_ticks() -> None:
    dom, _ = boot(cmdline="ticks=5")
    assert "    cmd_line: ticks=5" in dom.console.text.splitlines()
    assert len(T_LINE.findall(dom.console.text)) == 5


def test_cli_boot() -> None:
    p = subprocess.run([sys.executable, "-m", "miniguest.cli", "boot", "minios", "-c", "ticks=2"],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode().replace("\r\n", "\n")
    assert out.startswith("Bootstrapping...\nXen Minimal OS!\n")
    assert len(T_LINE.findall(out)) == 2
    assert b"shut down: poweroff" in p.stderr


class StopAt:
    """A code hook that stops the vCPU right before its `n`-th execution of `addr` (test instrumentation)."""

    def __init__(self, dom: Domain, addr: int, n: int) -> None:
        from unicorn import UC_HOOK_CODE
        self.addr, self.n, self.seen, self.hit = addr, n, 0, False
        self.handle = dom.vcpus[0].uc.hook_add(UC_HOOK_CODE, self._cb, None, addr, addr)

    def _cb(self, uc: Any, address: int, size: int, _: Any) -> None:
        self.seen += 1
        if self.seen == self.n:
            self.hit = True
            uc.emu_stop()


class Count:
    def __init__(self, dom: Domain, addr: int) -> None:
        from unicorn import UC_HOOK_CODE
        self.count = 0
        dom.vcpus[0].uc.hook_add(UC_HOOK_CODE, self._cb, None, addr, addr)

    def _cb(self, uc: Any, address: int, size: int, _: Any) -> None:
        self.count += 1


def _critical_points() -> dict[str, int]:
    """Where in the exit path an upcall can land: before the unmask test (rax still pushed), right after
    rax is popped (restore_end), and at the native iretq (cs/ss already ORed with RPL 3)."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    from miniguest.toolstack.symbols import Symbols
    with open(MINIOS, "rb") as f:                                    # type: ignore[arg-type]
        raw = f.read()
    syms = Symbols.from_elf(raw)
    scrit, restore_end, ecrit = (syms.address_of(n) for n in ("scrit", "restore_end", "ecrit"))
    assert scrit and restore_end and ecrit
    text = raw[0x1000 + restore_end:0x1000 + ecrit]                  # .text is at file offset 0x1000, VA 0
    iretq = next(i.address for i in Cs(CS_ARCH_X86, CS_MODE_64).disasm(text, restore_end) if i.mnemonic == "iretq")
    return {"scrit": scrit, "restore_end": restore_end, "iretq": iretq}


class ReturnTo:
    """Stops at `rip` once the fixup has run and the stack is back at `rsp`: the return to the merged frame."""

    def __init__(self, dom: Domain, rip: int, rsp: int, fixups: Count) -> None:
        from unicorn import UC_HOOK_CODE
        from unicorn import x86_const as UX
        self.rsp, self.fixups, self.regs, self._rsp_id = rsp, fixups, None, UX.UC_X86_REG_RSP
        self.vcpu = dom.vcpus[0]
        self.vcpu.uc.hook_add(UC_HOOK_CODE, self._cb, None, rip, rip)
        self.vcpu.uc.ctl_remove_cache(rip, rip + 1)          # already translated: retranslate with the hook

    def _cb(self, uc: Any, address: int, size: int, _: Any) -> None:
        if self.regs is None and self.fixups.count and uc.reg_read(self._rsp_id) == self.rsp:
            self.regs = self.vcpu.regs()


@pytest.mark.parametrize("where", ["scrit", "restore_end", "iretq"])
def test_upcall_inside_the_critical_region_is_merged(where: str) -> None:
    """An event that arrives while the exit path re-enables events lands inside [scrit, ecrit): the upcall
    must merge its frame with the one being restored (critical_region_fixup), so that when it is done the
    interrupted code resumes with exactly the registers the exit path was restoring."""
    from miniguest.abi.xen import VIRQ_TIMER
    reference, _ = boot(cmdline="ticks=2")
    dom = Domain.from_elf(MINIOS, cmdline="ticks=2")
    addr = _critical_points()[where]
    stop = StopAt(dom, addr, n=40)
    fixups = Count(dom, dom.symbols.address_of("critical_region_fixup"))
    assert dom.run(until=lambda d: stop.hit) == D.PAUSED
    vcpu = dom.vcpus[0]
    assert vcpu.rip == addr and vcpu.upcall_mask == 0
    # What the exit path is about to restore: the registers, rax (still pushed at scrit), the frame.
    regs = vcpu.regs()
    sp = regs["rsp"]
    if where == "scrit":
        regs["rax"] = vcpu.mem.read_u64(sp)
        sp += 8
    frame_rip, frame_rsp = vcpu.mem.read_u64(sp), vcpu.mem.read_u64(sp + 24)
    back = ReturnTo(dom, frame_rip, frame_rsp, fixups)
    assert dom.events.send_virq(VIRQ_TIMER, 0)                       # the upcall is due at once
    dom.run()
    assert dom.state == D.SHUTDOWN and dom.shutdown_reason == "poweroff", dom.crash_report
    assert fixups.count == 1
    assert back.regs is not None, "never returned to the interrupted frame"
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
                 "r15"):
        assert back.regs[name] == regs[name], name
    assert back.regs["rsp"] == frame_rsp
    # The extra upcall costs a few instructions: only the time stamps may move.
    assert T_LINE.sub("T()", dom.console.text) == T_LINE.sub("T()", reference.console.text)
