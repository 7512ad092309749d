"""`miniguest debug`, `miniguest gdb` and `miniguest boot --trace` as a user runs them."""
from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

import pytest
from debuglib import GDB, HELLO, ROOT, SELFTEST, needs_gdb, run_gdb

from guestlib import cli, read_until

CLI = [sys.executable, "-m", "miniguest.cli"]


def _wait_for_port(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    """Read the stub's stderr until it says where it listens."""
    seen = ""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
            m = re.search(r"waiting for gdb on 127\.0\.0\.1:(\d+)", line)
            if m:
                return int(m.group(1)), seen
    raise AssertionError(f"the stub did not say where it listens: {seen!r}")


@needs_gdb
def test_debug_waits_for_gdb_then_runs_to_poweroff():
    proc = subprocess.Popen(CLI + ["debug", "hello", "--gdb", "127.0.0.1:0", "--quiet"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port, said = _wait_for_port(proc)
        assert f"gdb -ex 'target remote 127.0.0.1:{port}'" in said
        out = run_gdb(port, HELLO, "break check", "continue", "p what", "detach")
        assert "Breakpoint 1, check (what=" in out and '$1 = 0xffffffff80002dde "start_info magic"' in out
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "shut down: poweroff" in err and "Traceback" not in err


def test_debug_reports_a_busy_port_in_one_line():
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = cli("debug", "hello", "--gdb", f"127.0.0.1:{port}", "--quiet", timeout=60)
    assert r.returncode == 1
    assert r.stderr.decode().startswith(f"miniguest: cannot listen on 127.0.0.1:{port}")
    assert b"Traceback" not in r.stderr


def test_debug_rejects_a_bad_address_and_a_bad_image():
    r = cli("debug", "hello", "--gdb", "127.0.0.1:notaport")
    assert r.returncode == 2 and b"bad port" in r.stderr
    r = cli("debug", os.path.join(ROOT, "README.md"), "--gdb", "127.0.0.1:0")
    assert r.returncode == 9 and b"Traceback" not in r.stderr


@needs_gdb
def test_gdb_command_starts_gdb_connected_with_symbols():
    r = subprocess.run(CLI + ["gdb", "hello", "--quiet", "--gdb-arg=-batch", "--gdb-arg=-nx",
                              "--gdb-arg=-ex", "--gdb-arg=break check", "--gdb-arg=-ex", "--gdb-arg=continue",
                              "--gdb-arg=-ex", "--gdb-arg=info registers cs"],
                       cwd=ROOT, capture_output=True, text=True, timeout=90)
    out = r.stdout + r.stderr
    assert "Breakpoint 1, check (what=" in out and "at firmware/hello/hello.c" in out
    assert re.search(r"^cs\s+0xe033", out, re.M)
    assert r.returncode == 0, out                       # gdb detached at exit; the guest powered off
    assert "shut down: poweroff" in out


def test_gdb_command_without_gdb_says_so():
    r = cli("gdb", "hello", "--gdb-binary", "/nonexistent/gdb", "--quiet", timeout=60)
    assert r.returncode == 1
    assert b"/nonexistent/gdb: not found" in r.stderr and b"Traceback" not in r.stderr


def test_boot_trace_prints_symbolized_disassembled_records():
    r = cli("boot", SELFTEST, "--cmdline", "bench int3 2", "--quiet", "--trace", "exceptions,hypercalls")
    assert r.returncode == 0
    err = r.stderr.decode()
    assert re.search(r"^\[ +\d+ ns\] hypercall  set_trap_table\(0x[0-9a-f]+\) = 0\n +from run_bench\+0x[0-9a-f]+: "
                     r"call rax$", err, re.M)
    assert re.search(r"^\[ +\d+ ns\] exception  int 0x3 \(#BP int3\)\n +at run_bench\+0x[0-9a-f]+: int3$", err, re.M)
    assert re.search(r"hypercall  sched_op\(shutdown, 0x[0-9a-f]+\) = 0", err)
    assert "event" not in err.replace("event_channel_op", "")


def test_boot_trace_all_and_events():
    r = cli("boot", "hello", "--quiet", "--trace", "events")
    err = r.stderr.decode()
    assert re.search(r"event      port 2 sent to dom0", err) and "hypercall " not in err
    r = cli("boot", "hello", "--quiet", "--trace", "all")
    err = r.stderr.decode()
    for kind in ("hypercall ", "event ", "console ", "shutdown "):
        assert kind in err


def test_boot_trace_rejects_unknown_kinds():
    r = cli("boot", "hello", "--trace", "hypercalls,bogus")
    assert r.returncode == 2
    assert b"unknown trace kind 'bogus'" in r.stderr


@pytest.mark.skipif(GDB is None, reason="gdb is not installed")
def test_firmware_sources_resolve_from_the_repository_root():
    assert os.path.exists(os.path.join(ROOT, "firmware", "hello", "hello.c"))


@pytest.mark.slow
@needs_gdb
def test_gdb_command_ctrl_c_goes_to_gdb_then_back_to_miniguest():
    """As on a terminal: Ctrl-C reaches the whole foreground process group. While gdb runs it interrupts the
    guest (miniguest ignores it); once gdb has quit (detaching), Ctrl-C stops miniguest (exit 130)."""
    import signal
    proc = subprocess.Popen(CLI + ["gdb", SELFTEST, "--cmdline", "spin", "--gdb-arg=-batch",
                                   "--gdb-arg=-nx", "--gdb-arg=-ex", "--gdb-arg=continue",
                                   "--gdb-arg=-ex", "--gdb-arg=bt 1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out = read_until(proc.stdout, "_text () at firmware/common/head.S")
        out = read_until(proc.stdout, "scenario 'spin'", sofar=out)   # gdb resumed the guest: it spins
        os.killpg(proc.pid, signal.SIGINT)
        out = read_until(proc.stdout, "gdb has exited; the guest runs on", sofar=out)
        assert "Program received signal SIGINT, Interrupt." in out, out
        assert re.search(r"#0 +guest_main \(.*\) at firmware/selftest/selftest.c:\d+", out), out
        assert proc.poll() is None                       # gdb is gone; the guest runs on, detached
        os.killpg(proc.pid, signal.SIGINT)               # and Ctrl-C is miniguest's again
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, out + rest
    assert "stopped from the host" in rest and "Traceback" not in rest
