"""The real gdb (batch mode) against the stub: the bundled hello guest and the selftest guest.

gdb runs from the repository root, where the debug info's `firmware/...` source names resolve."""
from __future__ import annotations

import re
import signal
import subprocess

import pytest
from debuglib import HELLO, ROOT, SELFTEST, gdb_command, needs_gdb, run_gdb

pytestmark = needs_gdb


def assert_clean(out: str) -> None:
    """gdb had nothing to complain about: no warnings, no protocol errors, no Python from us."""
    for bad in ("warning:", "Protocol error", "Remote failure", "Traceback", "Remote connection closed"):
        assert bad not in out, out


def test_connect_shows_the_entry_and_xen_registers(stub_for):
    s = stub_for(HELLO)
    out = run_gdb(s.port, HELLO, "info registers", "x/4i $pc", "info threads", "detach")
    assert_clean(out)
    assert "_text () at firmware/common/head.S" in out            # stopped before the first instruction
    assert re.search(r"^cs\s+0xe033\s", out, re.M) and re.search(r"^ss\s+0xe02b\s", out, re.M)
    assert re.search(r"^rip\s+0xffffffff80000000\s", out, re.M)
    assert re.search(r"^fs_base\s+0x0\s", out, re.M)
    assert "=> 0xffffffff80000000 <_text>:\tcld" in out
    assert "Thread 1" in out and "vcpu0" in out
    assert s.join() == "shutdown"                                   # detached: ran to poweroff


def test_break_next_step_bt_finish(stub_for):
    s = stub_for(HELLO)
    out = run_gdb(s.port, HELLO, "break guest_main", "continue", "next", "next", "next", "step", "bt",
                  "finish", "p $xmm0.uint128", "p $st0")
    assert_clean(out)
    assert "Breakpoint 1, guest_main (si=0xffffffff80018000) at firmware/hello/hello.c:22" in out
    assert "28\t    hv_printf(\"hello: booting (hypervisor console only)\\n\");" in out
    assert re.search(r"hv_printf \(fmt=.*\) at firmware/common/console.c:\d+", out)
    assert re.search(r"#1 +0x[0-9a-f]+ in guest_main \(si=0xffffffff80018000\) at firmware/hello/hello.c:28", out)
    assert re.search(r"guest_main \(si=0xffffffff80018000\) at firmware/hello/hello.c:30", out)  # finish
    assert "$1 = 0" in out and "$2 = 0" in out


def test_watch_a_global_variable(stub_for):
    s = stub_for(HELLO)
    out = run_gdb(s.port, HELLO, "watch passed", "continue", "continue", "bt 1", "delete", "continue")
    assert_clean(out)
    assert "Hardware watchpoint 1: passed" in out
    assert "Old value = 0\nNew value = 1" in out and "Old value = 1\nNew value = 2" in out
    assert re.search(r"#0 .*check \(what=.*\"hypercall page filled\", ok=1\) at firmware/hello/hello.c", out)
    assert "[Inferior 1 (Remote target) exited normally]" in out
    assert s.join() == "shutdown"


def test_stepi_over_the_syscall_runs_the_hypercall(stub_for):
    s = stub_for(HELLO)
    out = run_gdb(s.port, HELLO, "break *hypercall_page+32*17+8", "continue", "x/i $pc", "p $rax", "stepi",
                  "x/i $pc", "p/x $rax")
    assert_clean(out)
    assert "<hypercall_page+552>:\tsyscall" in out
    assert "$1 = 17" in out
    assert "<hypercall_page+554>:\tpop    %r11" in out
    assert "$2 = 0x40013" in out                                    # Xen 4.19


def test_nexti_steps_over_a_call_into_the_hypercall_page(stub_for):
    s = stub_for(HELLO)
    # guest_main calls the hypercall page through a register (`call *%rbx`): stop on that call, nexti.
    out = run_gdb(s.port, HELLO, "break HYPERVISOR_xen_version", "continue", "x/20i $pc")
    call = re.search(r"(0x[0-9a-f]+) <guest_main\+(\d+)>:\tcall   \*%rbx", out)
    assert call, out
    after = int(call.group(1), 16) + 2
    s2 = stub_for(HELLO)
    out = run_gdb(s2.port, HELLO, f"break *{call.group(1)}", "continue", "nexti", "p/x $pc", "p/x $rax")
    assert_clean(out)
    assert f"$1 = {after:#x}" in out
    assert "$2 = 0x40013" in out                                    # the hypercall ran, its result in rax


def test_ctrl_c_interrupts_a_spinning_guest(stub_for):
    s = stub_for(SELFTEST, cmdline="spin")
    p = subprocess.Popen(gdb_command(s.port, SELFTEST, ["continue", "bt", "monitor domain", "detach"]),
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert s.wait_until(lambda: s.stub.running and s.domain.clock.icount > 1_000_000)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert_clean(out)
    assert "Program received signal SIGINT, Interrupt." in out
    assert re.search(r"#0 +guest_main \(.*\) at firmware/selftest/selftest.c:\d+", out)
    assert "state paused" in out


def test_monitor_commands_through_gdb(stub_for):
    s = stub_for(HELLO)
    out = run_gdb(s.port, HELLO, "monitor evtchn", "monitor store read name", "monitor catch hypercall sched_op",
                  "continue", "bt 4", "monitor hypercalls 2")
    assert_clean(out)
    assert re.search(r"^\s+1 .. vcpu0 interdomain d0:\d+$", out, re.M)
    assert "hello\n" in out
    assert "Program received signal SIGTRAP" in out
    assert "Catchpoint: hypercall sched_op(shutdown, " in out
    assert re.search(r"#2 .*HYPERVISOR_sched_op \(", out)
    assert "event_channel_op(send" in out


def test_crash_shows_sigsegv_at_the_faulting_line(stub_for):
    s = stub_for(SELFTEST, cmdline="earlyfault")
    out = run_gdb(s.port, SELFTEST, "continue", "bt 1", "continue")
    assert "Program received signal SIGSEGV, Segmentation fault." in out
    assert re.search(r"#0 +0x[0-9a-f]+ in guest_main \(.*\) at firmware/selftest/selftest.c:\d+", out)
    assert "*(volatile unsigned long *)0x7ff000000000UL = 1;" in out          # the faulting line
    assert "domain d1 (selftest) crashed: unhandled exception 14" in out     # the crash report
    assert "Program terminated with signal SIGSEGV" in out
    assert s.join() == "crashed"


@pytest.mark.parametrize("command", ["kill", "detach"])
def test_session_end(stub_for, command):
    s = stub_for(HELLO)
    out = run_gdb(s.port, HELLO, "break check", "continue", command)
    assert_clean(out)
    assert s.join() == ("stopped" if command == "kill" else "shutdown")
