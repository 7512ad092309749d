"""The hypervisor side of debugging (hypervisor/debugsupport.py), without the protocol: a debugged run is
instruction-for-instruction the run without a debugger, single-steps hold event upcalls, and the normal path
carries no debugger hook."""
from __future__ import annotations

import os

import pytest
from debuglib import HELLO, SAMPLES, SELFTEST

from miniguest import Domain
from miniguest.hypervisor.disasm import describe_insn
from miniguest.debug.tracer import Tracer
from miniguest.hypervisor.debugger import DebugSupport

FAULTS = os.path.join(SAMPLES, "faults.elf")


def trace_of(domain: Domain) -> Tracer:
    return Tracer(domain).attach()


def records(tracer: Tracer) -> list[tuple]:
    return [(r.time, r.kind, r.data) for r in tracer.records]


def plain_run(image: str) -> list[tuple]:
    d = Domain.from_elf(image)
    t = trace_of(d)
    d.run()
    d.close()
    return records(t)


def hello_session(d: Domain, dbg: DebugSupport) -> None:
    check = d.symbols.address_of("check")
    dbg.insert_breakpoint(check)
    for _ in range(3):
        assert dbg.resume(step=False).reason == "breakpoint"
        assert d.vcpus[0].rip == check
    for _ in range(5):
        assert dbg.resume(step=True).reason == "step"
    dbg.remove_breakpoint(check)
    passed = d.symbols.address_of("passed")
    dbg.insert_watchpoint("watch", passed, 4)
    for _ in range(2):
        assert dbg.resume(step=False).reason == "watchpoint"
    dbg.remove_watchpoint("watch", passed, 4)


def faults_session(d: Domain, dbg: DebugSupport) -> None:
    names = ["exception_cases", "event_cases", "timer_cases", "result", "do_upcall"]
    for n in names:
        dbg.insert_breakpoint(d.symbols.address_of(n))
    for i in range(40):
        if dbg.resume(step=False) is None:
            break
        if i % 5 == 0:
            for _ in range(3):
                dbg.resume(step=True)
    for n in names:
        dbg.remove_breakpoint(d.symbols.address_of(n))


@pytest.mark.parametrize("image,session", [(HELLO, hello_session), (FAULTS, faults_session)],
                         ids=["hello", "faults"])
def test_a_debugged_run_is_the_same_run(image, session):
    """Breakpoints, steps and watchpoints leave every trace record -- and its virtual time -- unchanged."""
    if not os.path.exists(image):
        pytest.skip(f"{image} not built")
    d = Domain.from_elf(image)
    t = trace_of(d)
    dbg = DebugSupport(d)
    assert dbg.run_to_entry().reason == "entry"
    assert d.vcpus[0].rip == d.image.entry and d.clock.icount == 1      # only Xen's iretq ran
    session(d, dbg)
    while dbg.resume(step=False) is not None:
        pass
    assert d.state == "shutdown"
    assert records(t) == plain_run(image)
    d.close()


def test_single_step_holds_event_upcalls():
    """Stepping across a timer deadline in a compute loop: the upcall waits until the guest continues, then
    interrupts the loop as it would have (the faults guest checks where its upcall landed)."""
    if not os.path.exists(FAULTS):
        pytest.skip("faults.elf not built")
    d = Domain.from_elf(FAULTS)
    dbg = DebugSupport(d)
    dbg.run_to_entry()
    vcpu = d.vcpus[0]
    # The compute loop in timer_cases: `1: inc; cmpq $0,timer_fired_ns; jne 2f; cmp $50000000; jb 1b`.
    start = d.symbols.address_of("timer_cases")
    loop_cmp = next(a for a in range(start, start + 4096)
                    if (describe_insn(vcpu.aspace, a) or "").startswith("cmp r12, 0x2faf080"))
    dbg.insert_breakpoint(loop_cmp)
    assert dbg.resume(step=False).reason == "breakpoint"
    dbg.remove_breakpoint(loop_cmp)
    deadline = d.timers.next_deadline()
    assert deadline is not None and deadline > d.clock.now_ns()
    d.clock.icount = deadline - d.clock.idle_ns - 8       # fast-forward to just before the timer
    rips = []
    for _ in range(40):
        assert dbg.resume(step=True).reason == "step"
        rips.append(vcpu.rip)
    assert d.clock.now_ns() > deadline
    assert vcpu.upcall_pending and not vcpu.upcall_mask          # an upcall is due ...
    assert all(loop_cmp - 16 <= r <= loop_cmp + 16 for r in rips), [hex(r) for r in rips]   # ... and held
    while dbg.resume(step=False) is not None:
        pass
    assert "timer during a compute loop: upcall" in d.console.text
    assert "faults: 54/54 cases ok" in d.console.text or "FAIL" not in d.console.text.split("compute loop")[1]
    d.close()


def test_no_debugger_hook_on_the_normal_path():
    """A domain nobody debugs has no code hook beyond the hypervisor's own, and a debugger that is done leaves
    none behind."""
    d = Domain.from_elf(SELFTEST, cmdline="layout")
    base = set(d.vcpus[0].uc._callbacks)
    dbg = DebugSupport(d)
    dbg.run_to_entry()
    addr = d.symbols.address_of("guest_main")
    dbg.insert_breakpoint(addr)
    dbg.insert_watchpoint("watch", d.symbols.address_of("failures"), 4)
    assert len(d.vcpus[0].uc._callbacks) > len(base)
    dbg.resume(step=False)
    dbg.resume(step=True)
    dbg.remove_breakpoint(addr)
    dbg.remove_watchpoint("watch", d.symbols.address_of("failures"), 4)
    dbg.resume(step=False)                       # runs freely: the step hook goes
    assert set(d.vcpus[0].uc._callbacks) == base
    d.close()
