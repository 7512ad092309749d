"""Stepping through the minios sample's start_kernel with the real gdb: the session issue 5 is about.

gdb runs from the repository root, where the debug info's `firmware/...` source names resolve."""
from __future__ import annotations

import re
import signal
import subprocess

from debuglib import MINIOS, ROOT, gdb_command, needs_gdb, needs_minios, run_gdb

pytestmark = [needs_gdb, needs_minios]


def assert_clean(out: str) -> None:
    for bad in ("warning:", "Protocol error", "Remote failure", "Traceback", "Remote connection closed"):
        assert bad not in out, out


def test_break_start_kernel_next_step_bt(stub_for):
    s = stub_for(MINIOS, cmdline="ticks=1")
    out = run_gdb(s.port, MINIOS, "break start_kernel", "continue", "next", "next", "next", "step", "bt",
                  "info registers cs ss rip", "x/4i $pc", "finish")
    assert_clean(out)
    assert re.search(r"Breakpoint 1, start_kernel \(\) at firmware/minios/kernel.c:\d+", out)
    # next: one source line at a time, through start_kernel's own lines.
    assert re.search(r"\n\d+\t    init_events\(\);\n\d+\t    local_irq_enable\(\);\n"
                     r"\d+\t    setup_xen_features\(\);\n", out), out
    # step: into the function called on that line.
    assert re.search(r"setup_xen_features \(\) at firmware/minios/kernel.c:\d+", out)
    # bt: start_kernel was called from arch_init, called from the entry code.
    assert re.search(r"#1 +0x[0-9a-f]+ in start_kernel \(\) at firmware/minios/kernel.c:\d+", out)
    assert re.search(r"#2 +0x[0-9a-f]+ in arch_init \(si=0x[0-9a-f]+\) at firmware/minios/setup.c:\d+", out)
    assert re.search(r"#3 +0x[0-9a-f]+ in _text \(\) at firmware/minios/x86_64.S:\d+", out)
    assert re.search(r"^cs\s+0xe033\s+57395$", out, re.M) and re.search(r"^ss\s+0xe02b\s", out, re.M)
    assert re.search(r"=> 0x[0-9a-f]+ <setup_xen_features>:\t", out)
    assert "Run till exit" in out or re.search(r"start_kernel \(\) at firmware/minios/kernel.c:\d+\n\d+\t    init_mm", out)


def test_watch_a_global_variable(stub_for):
    s = stub_for(MINIOS, cmdline="ticks=1")
    out = run_gdb(s.port, MINIOS, "break start_kernel", "continue", "watch console_initialised", "continue",
                  "bt 2", "p console_initialised")
    assert_clean(out)
    assert "Hardware watchpoint 2: console_initialised" in out
    assert "Old value = 0\nNew value = 1" in out
    assert re.search(r"#0 +(0x[0-9a-f]+ in )?init_console \(\) at firmware/minios/console.c:\d+", out)
    assert re.search(r"#1 +0x[0-9a-f]+ in start_kernel \(\)", out)
    assert "$1 = 1" in out


def test_stepi_and_nexti_over_a_hypercall(stub_for):
    # The syscall in xen_version's hypercall page slot: one stepi runs the whole hypercall.
    s = stub_for(MINIOS, cmdline="ticks=1")
    out = run_gdb(s.port, MINIOS, "break *hypercall_page+32*17+8", "continue", "x/i $pc", "p $rax", "stepi",
                  "x/i $pc", "p $rax", "delete", "break setup_xen_features", "continue",
                  "x/40i setup_xen_features")
    assert_clean(out)
    assert re.search(r"<hypercall_page\+552>:\tsyscall", out)
    assert "$1 = 17" in out
    assert re.search(r"=> 0x[0-9a-f]+ <hypercall_page\+554>:\tpop    %r11", out)
    # setup_xen_features calls the page through a register: nexti on that call steps over the hypercall.
    call = re.search(r"(0x[0-9a-f]+) <setup_xen_features\+\d+>:\tcall   \*%(\w+)", out)
    assert call, out
    s2 = stub_for(MINIOS, cmdline="ticks=1")
    out = run_gdb(s2.port, MINIOS, f"break *{call.group(1)}", "continue", "p/x ${}".format(call.group(2)),
                  "nexti", "p/x $pc", "p $rax", "p xen_features[5]")
    assert_clean(out)
    assert "$1 = 0x2220" in out                                   # hypercall_page + 32 * 17
    assert f"$2 = {int(call.group(1), 16) + 2:#x}" in out          # the instruction after the call
    assert "$3 = 0" in out                                         # XENVER_get_features succeeded


def test_ctrl_c_then_stepi_never_enters_the_event_callback(stub_for):
    """minios idles between timer ticks; after Ctrl-C, 150 stepi cross a SCHEDOP_block that a timer event
    ends: the upcall is held while stepping (the VIRQ_TIMER port stays pending), never stepped into."""
    s = stub_for(MINIOS, cmdline="ticks=0")
    steps = ("python pcs = [(gdb.execute('stepi', to_string=True), int(gdb.parse_and_eval('$pc')))[1] "
             "for _ in range(150)]")
    check = ("python cb = int(gdb.parse_and_eval('(long)&hypervisor_callback')); "
             "print('STEPPED', len(pcs), 'IN_CALLBACK', sum(1 for p in pcs if cb <= p < cb + 0x80))")
    cmd = gdb_command(s.port, MINIOS, ["continue", "bt 1", steps, check, "monitor evtchn", "continue", "detach"])
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert s.wait_until(lambda: s.stub.running and s.domain.clock.now_ns() > 1_500_000_000, timeout=30)
        p.send_signal(signal.SIGINT)
        assert s.wait_until(lambda: not s.stub.running, timeout=30)
        resume = s.stub.debug
        assert s.wait_until(lambda: s.stub.running and resume._resume is not None and not resume._resume.step,
                            timeout=60)                        # the continue after the steps
        p.send_signal(signal.SIGINT)                           # interrupt the final continue
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert_clean(out.replace("warning: Error disabling address space randomization", ""))
    assert out.count("Program received signal SIGINT, Interrupt.") == 2
    assert "STEPPED 150 IN_CALLBACK 0" in out
    assert re.search(r"^\s+3 P- vcpu0 virq VIRQ_TIMER$", out, re.M)   # pending, held
    assert re.search(r"^\s+2 .. vcpu0 interdomain d0:\d+$", out, re.M)


def test_detach_lets_minios_run_to_shutdown(stub_for):
    s = stub_for(MINIOS, cmdline="ticks=1")
    out = run_gdb(s.port, MINIOS, "break start_kernel", "continue", "monitor hypercalls 3", "detach")
    assert_clean(out)
    assert "console_io(write" in out or "hypercall " in out
    assert s.join() == "shutdown"
    assert "T(s=" in s.domain.console.text
    assert "Periodic thread done after 1 ticks: powering off." in s.domain.console.text
