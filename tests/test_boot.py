"""Booting the bundled hello guest and the selftest guest: console, exit codes, options, xl.cfg files."""
from __future__ import annotations

import os

import pytest

from guestlib import HELLO, SELFTEST, boot, cli, selftest

HELLO_LINES = [
    "hello: booting (hypervisor console only)",
    "hello: Hello from a Xen PV guest on Xen 4.19.0-miniguest!",
    "hello: 32 MiB, start_info at 0xffffffff80018000, console on port 2, xenstore on port 1",
    "hello: 7/7 checks passed, powering off",
]


def test_hello_prints_each_line_once_and_powers_off():
    dom = boot(HELLO)
    text = dom.console.text
    for line in HELLO_LINES:
        assert text.count(line) == 1, line
    assert text.count("hello: check ") == 7 and "FAILED" not in text
    assert (dom.state, dom.shutdown_reason) == ("shutdown", "poweroff")
    # Lines after the first went through both console_io and the ring: each source saw them.
    assert b"Hello from a Xen PV guest" in dom.console.raw["hypervisor"]
    assert b"Hello from a Xen PV guest" in dom.console.raw["ring"]
    assert b"booting (hypervisor console only)" not in dom.console.raw["ring"]
    dom.close()


def test_cli_boot_default_sample_exits_0():
    r = cli("boot")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.count("Hello from a Xen PV guest") == 1
    assert "shut down: poweroff" in r.stderr.decode()


def test_cli_samples_lists_hello():
    r = cli("samples")
    assert r.returncode == 0
    assert r.stdout.decode().startswith("hello ")


def test_console_log_file_and_quiet(tmp_path):
    log = tmp_path / "console.log"
    r = cli("boot", "hello", "--quiet", "--console-log", str(log))
    assert r.returncode == 0
    assert r.stdout == b""
    assert log.read_bytes().decode().replace("\r\n", "\n").count("7/7 checks passed") == 1


@pytest.mark.parametrize("scenario,code", [("reboot", 4), ("crash", 3), ("hang", 8), ("earlyfault", 3),
                                           ("suspend", 5), ("watchdog", 6)])
def test_cli_exit_codes(scenario, code):
    r = cli("boot", SELFTEST, "--cmdline", scenario, "--quiet")
    assert r.returncode == code, r.stderr.decode()
    assert b"Traceback" not in r.stderr


def test_instruction_budget_exit_7():
    r = cli("boot", SELFTEST, "--cmdline", "spin", "--max-insns", "2000000", "--quiet")
    assert r.returncode == 7
    assert "instruction budget of 2000000 exhausted" in r.stderr.decode()


def test_budget_stops_at_the_budget_through_the_api():
    dom = selftest("spin", max_instructions=3_000_000)
    assert dom.state == "budget"
    assert 3_000_000 <= dom.clock.icount < 3_000_000 + 1000
    dom.close()


def test_xl_config_file(tmp_path):
    cfg = tmp_path / "guest.cfg"
    cfg.write_text(f'# a domU\nname = "cfgguest"\nkernel = "{os.path.relpath(SELFTEST, tmp_path)}"\n'
                   'memory = 16\nextra = "layout"\non_reboot = "destroy"\n')
    r = cli("boot", str(cfg), "--quiet", "--console-log", str(tmp_path / "log"))
    assert r.returncode == 0, r.stderr.decode()
    log = (tmp_path / "log").read_text()
    assert "nr_pages = 4096" in log and "cmd_line = layout" in log
    assert "domain cfgguest shut down" in r.stderr.decode()


def test_xl_config_restart_on_reboot(tmp_path):
    cfg = tmp_path / "r.cfg"
    cfg.write_text(f'kernel = "{SELFTEST}"\nextra = "reboot"\non_reboot = "restart"\n')
    r = cli("boot", str(cfg), "--quiet")
    assert r.returncode == 4
    assert r.stderr.decode().count("restarting the domain") == 16


def test_bad_xl_config_is_one_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('memory = 16\n')
    r = cli("boot", str(cfg))
    assert r.returncode == 1
    assert r.stderr.decode().strip().count("\n") == 0 and "no kernel= line" in r.stderr.decode()


def test_log_hypercalls_symbolizes_the_caller():
    r = cli("boot", "hello", "--quiet", "--log-hypercalls")
    err = r.stderr.decode()
    assert r.returncode == 0
    assert "console_io(write, 0x" in err and "<hv_write+" in err
    assert "xen_version(version, 0x0) = 0x40013" in err
    assert "sched_op(shutdown," in err


def test_ctrl_c_stops_a_spinning_guest():
    import signal
    import subprocess
    import sys
    from guestlib import ROOT, read_until
    # (--max-insns: a safety net, so that a failing test never leaves a guest spinning for ever)
    p = subprocess.Popen([sys.executable, "-m", "miniguest.cli", "boot", SELFTEST, "--cmdline", "spin",
                          "--max-insns", "20000000000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(p.stdout, "scenario 'spin'")          # the guest runs: Ctrl-C now finds it spinning
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, err.decode()
    assert b"stopped from the host" in err and b"Traceback" not in err


def test_a_guest_printing_forever_is_bounded_in_memory():
    from miniguest.backends.console import KEEP_BYTES, ConsoleLog
    log = ConsoleLog()
    for _ in range(3000):
        log.write("ring", b"x" * 4095 + b"\n")
    assert len(log.merged) <= KEEP_BYTES and len(log.raw["ring"]) <= KEEP_BYTES
