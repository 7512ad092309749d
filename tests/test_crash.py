"""A guest that faults before it has a trap table gets a crash report: symbolized RIP, the instruction,
registers -- never a Python traceback."""
from __future__ import annotations

from guestlib import SELFTEST, cli


def test_early_fault_report(boot_guest):
    run = boot_guest(SELFTEST, cmdline="earlyfault")
    dom = run.domain
    assert dom.state == "crashed"
    report = dom.crash_report
    assert "unhandled exception 14 with no handler in the trap table" in report
    assert "RIP: 0x" in report and "<guest_main+0x" in report
    assert "instruction: mov qword ptr [rax], 1" in report
    assert "CR2=00007ff000000000" in report
    fault = next(r.data for r in run.trace if r.kind == "exception")
    assert (fault["vector"], fault["cr2"]) == (14, 0x7FF000000000) and fault["site"].startswith("guest_main+")


def test_early_fault_cli():
    r = cli("boot", SELFTEST, "--cmdline", "earlyfault")
    err = r.stderr.decode()
    assert r.returncode == 3
    assert "crashed: unhandled exception 14" in err and "<guest_main+0x" in err
    assert "Traceback" not in err
