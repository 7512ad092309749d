"""Golden traces of the sample guests: every hypercall they make, with its decoded arguments and results,
every event, timer, console and xenstore message, in order, at its virtual time. A change in hypercall
handling shows up here as the first diverging record (regenerate with --update-golden when intended)."""
from __future__ import annotations

import pytest
from regresslib import HELLO, MINIOS, SELFTEST


def test_hello_golden(boot_guest, golden):
    run = boot_guest(HELLO)
    assert run.shutdown_reason == "poweroff"
    golden.check("hello", run)


@pytest.mark.skipif(MINIOS is None, reason="minios.elf is not built")
def test_minios_golden(boot_guest, golden):
    run = boot_guest(MINIOS, cmdline="ticks=1")
    assert run.shutdown_reason == "poweroff"
    kinds = {r.kind for r in run.trace}
    assert {"hypercall", "event", "upcall", "console", "xenstore", "privop", "shutdown"} <= kinds
    golden.check("minios", run)


def test_selftest_sleep_golden(boot_guest, golden):
    """An idle jump of the virtual clock: SCHEDOP_poll with a timeout and no ports is a sleep."""
    run = boot_guest(SELFTEST, cmdline="sleep 25")
    assert run.shutdown_reason == "poweroff"
    assert "idle" in {r.kind for r in run.trace}
    golden.check("selftest-sleep", run)


@pytest.mark.skipif(MINIOS is None, reason="minios.elf is not built")
def test_minios_bind_virq_failure_golden(boot_guest, golden):
    """Mini-OS's error path when EVTCHNOP_bind_virq fails: it reports the error and crashes cleanly."""
    run = boot_guest(MINIOS, cmdline="ticks=1", inject=["hypercall:event_channel_op:bind_virq:-ENOSPC@1"])
    assert run.state == "crashed" and run.shutdown_reason == "crash"
    assert "Failed to bind virtual IRQ 0 with rc=-28" in run.console
    injected = [r for r in run.trace if r.kind == "inject"]
    assert len(injected) == 1 and injected[0].data["errno"] == "ENOSPC"
    call = next(r for r in run.trace if r.seq > injected[0].seq and r.kind == "hypercall")
    assert (call.data["subop"], call.data["errno"], call.data.get("out")) == ("bind_virq", "ENOSPC", None)
    golden.check("minios-bind-virq-enospc", run)
