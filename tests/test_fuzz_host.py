"""The fuzzer's CI-sized run (tools/fuzz.py: fixed seeds, a few seconds in all) and a regression test for each
bug it found. A failing case prints the command that replays it: `python3 tools/fuzz.py TARGET --seed S
--case I`."""
from __future__ import annotations

import importlib.util
import logging
import sys

import pytest
from unicorn import x86_const as X

from miniguest import Domain

from guestlib import ROOT

_spec = importlib.util.spec_from_file_location("fuzz", f"{ROOT}/tools/fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz"] = fuzz
_spec.loader.exec_module(fuzz)

SEED = 20261206
# cases per target: chosen so that the whole module takes a few seconds
CASES = {"elf": 30, "xlcfg": 150, "snapshot": 25, "trace": 40, "xenstore": 60, "hypercall": 6, "gdb": 25,
         "cli": 30}
pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def errors():
    handler = fuzz.ErrorLog()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@pytest.mark.slow
@pytest.mark.no_page_type_audit("the fuzz cases audit (and close) every domain they build themselves")
@pytest.mark.parametrize("name", sorted(CASES))
def test_fuzz_ci_subset(name, errors):
    target = fuzz.TARGETS[name]()
    target.setup()
    found = []
    for i in range(CASES[name]):
        result = fuzz.run_case(target, SEED, i, budget=120, errors=errors)
        if result is not None:
            found.append(f"python3 tools/fuzz.py {name} --seed {SEED} --case {i}\n{result}")
    assert not found, "\n\n".join(found[:3])


def test_the_fuzzer_finds_a_planted_bug(errors, monkeypatch):
    """The harness itself: a traceback from the code under test is reported with a replay command."""
    from miniguest.regress import trace_files as tracefile
    monkeypatch.setattr(tracefile, "format_record", lambda rec: rec.data["no such field"])
    target = fuzz.TARGETS["trace"]()
    target.setup()
    results = [fuzz.run_case(target, SEED, i, errors=errors) for i in range(20)]
    assert any(r and "KeyError: 'no such field'" in r for r in results)


def test_event_upcall_onto_an_unusable_kernel_stack_crashes_the_domain():
    """fuzz hypercall: a guest stopped in kernel mode with its stack pointer on unmapped memory and an event
    pending: the upcall's bounce frame cannot be written, and the domain is crashed (Xen's
    create_bounce_frame -> domain_crash) -- the GuestCrash used to escape Domain.run as a traceback."""
    dom = Domain.from_elf(fuzz.MINIOS, console_output=lambda b: None)
    dom.hypercall_observers.append(fuzz.PauseAfter(5))
    assert dom.run() == "paused"
    dom.hypercall_observers.clear()
    vcpu = dom.vcpus[0]
    assert vcpu.event_callback and vcpu.kernel_mode
    vcpu.uc.reg_write(X.UC_X86_REG_RSP, 0x7FF000000000)
    vcpu.mark_events_pending()
    view, off = vcpu.vcpu_info()
    view[off + 1] = 0                      # upcall_mask clear: the event is delivered at once
    assert dom.run() == "crashed"
    assert "cannot write the exception frame" in dom.crash_report
    assert not getattr(dom, "internal_traceback", None)
    dom.close()


def _hypercall(dom, nr: int, *args: int) -> int:
    """Issue a hypercall through the vCPU's syscall path, as the guest's hypercall page does."""
    vcpu = dom.vcpus[0]
    regs = (X.UC_X86_REG_RAX, X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX, X.UC_X86_REG_R10)
    for reg, value in zip(regs, (nr,) + args):
        vcpu.uc.reg_write(reg, value)
    vcpu._on_syscall()
    result = vcpu.uc.reg_read(X.UC_X86_REG_RAX)
    return result - (1 << 64) if result >> 63 else result


def test_pirq_eoi_frame_zero_is_registered_once():
    """fuzz hypercall (seed 7, cases 580/629/1157): PHYSDEVOP_pirq_eoi_gmfn_v2 naming machine frame 0 took a
    writable type reference, and a second call took another one instead of -EBUSY (frame 0 was taken for "none
    registered"), leaving a type count the page tables do not account for."""
    from miniguest.hypervisor.x86.page_types import audit_domain
    dom = Domain.from_elf(fuzz.SELFTEST, cmdline="hang", console_output=lambda b: None)
    assert dom.run() == "hung"
    dom.state = "paused"
    lay = dom.layout
    scratch = lay.stack + 16 * 4096
    dom.mem.frame(dom.p2m[lay.pfn(scratch)])[:8] = (0).to_bytes(8, "little")
    assert dom.frames.owner[0] == dom.domid
    assert _hypercall(dom, 33, 17, scratch) == 0            # physdev_op(PHYSDEVOP_pirq_eoi_gmfn_v2, &gmfn)
    assert dom.pirq_eoi_mfn == 0
    assert _hypercall(dom, 33, 17, scratch) == -16          # -EBUSY: one per domain
    assert audit_domain(dom) == []
    dom.close()
