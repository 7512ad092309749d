"""How `miniguest boot` and `trace record` end a run, as a user sees it: limits, signals, console input that
cannot come, the ready file scripts wait on, configuration values miniguest cannot honour yet."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from guestlib import ROOT, SELFTEST, cli, read_until, wait_until

CLI = [sys.executable, "-m", "miniguest.cli"]
needs_xenstore_utils = pytest.mark.skipif(shutil.which("xenstore-ls") is None, reason="needs xenstore-utils")


def boot(*args: str, stdin: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["boot", *args], input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, cwd=ROOT)


# -- configuration values miniguest cannot honour yet ---------------------------------------------------------
@pytest.mark.slow
def test_vcpus_in_an_xl_config_is_warned_about_with_the_value_used(tmp_path):
    cfg = tmp_path / "smp.cfg"
    cfg.write_text(f'kernel = "{SELFTEST}"\nvcpus = 2\nextra = "reboot"\n')
    r = boot(str(cfg))
    err = r.stderr.decode()
    assert r.returncode == 4, err                        # it booted (and rebooted, as the scenario asks)
    assert "warning: " in err and "vcpus=2" in err and "booting with vcpus=1" in err
    cfg.write_text(f'kernel = "{SELFTEST}"\nvcpus = 1\nextra = "reboot"\n')
    assert "vcpus" not in boot(str(cfg)).stderr.decode()


# -- limits -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_max_time_bounds_an_idle_guest_and_says_which_limit_ended_the_run():
    # An hour of sleep costs a few thousand instructions: --max-insns cannot bound it, --max-time does.
    r = boot(SELFTEST, "-c", "sleep 3600000", "--max-insns", "10000000", "--max-time", "2", "--quiet")
    err = r.stderr.decode()
    assert r.returncode == 7, err
    assert "virtual time limit of 2 s reached (--max-time)" in err and "instruction budget" not in err
    r = boot(SELFTEST, "-c", "spin", "--max-insns", "10000000", "--max-time", "2", "--quiet")
    err = r.stderr.decode()
    assert r.returncode == 7 and "instruction budget of 10000000 exhausted (--max-insns)" in err, err
    r = boot(SELFTEST, "-c", "sleep 1500", "--max-time", "2", "--quiet")
    assert r.returncode == 0, r.stderr.decode()          # ended on its own before the limit
    assert boot(SELFTEST, "--max-time", "soon").returncode == 2


def test_max_time_from_python():
    from miniguest import Domain
    dom = Domain.from_elf(SELFTEST, cmdline="sleep 3600000", max_time=0.5)
    assert dom.run() == "budget" and dom.budget_exhausted == "time"
    assert dom.clock.now_ns() == 500_000_000 and dom.clock.icount < 1_000_000
    dom.close()


# -- signals ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_shows_the_unfinished_last_line_and_exits_143():
    """A guest that prints a prompt without a newline and busy-polls its ring (as GRUB does) never idles, so
    the prompt waits in the console merger; SIGTERM must still show it."""
    p = subprocess.Popen(CLI + ["boot", SELFTEST, "-c", "echo spin", "--log-hypercalls",
                                "--max-insns", "20000000000"], cwd=ROOT,             # (a safety net)
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(p.stderr, "sched_op(yield")           # the prompt is written: the guest polls
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 143, err.decode()[-2000:]
    assert out.decode().endswith("echo: type lines, 'quit' to stop\necho> ")
    assert b"stopped from the host (SIGTERM)" in err and b"Traceback" not in err


# -- console input that cannot come -------------------------------------------------------------------------
def test_a_guest_waiting_at_a_prompt_with_no_possible_input_is_hung():
    """The guest keeps a 10 ms timer ticking while it waits, so it is never 'blocked with nothing to wake it';
    with standard input not a terminal (and no --stdin) nothing can ever answer its prompt."""
    r = boot(SELFTEST, "-c", "echo prompt", "--max-time", "60")
    err = r.stderr.decode()
    assert r.returncode == 8, err
    assert "waiting for console input at 'echo>'" in err and "none can come" in err and "--stdin" in err
    assert r.stdout.decode().endswith("echo> ")


def test_input_that_ends_then_a_prompt_is_hung():
    r = boot(SELFTEST, "-c", "echo prompt", "--stdin", "--max-time", "60", stdin=b"abc\n")
    err = r.stderr.decode()
    assert r.returncode == 8, err
    assert "echo: abc\n" in r.stdout.decode() and "standard input has ended" in err


@pytest.mark.slow
def test_a_prompt_is_not_hung_while_input_can_still_come(tmp_path):
    # An open pipe with --stdin: the user may still type. The run ends at the time limit, not as hung.
    p = subprocess.Popen(CLI + ["boot", SELFTEST, "-c", "echo prompt", "--stdin", "--max-time", "5"], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.wait(timeout=300)                             # stdin stays open until the run has ended
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    assert p.returncode == 7 and b"--max-time" in err, err
    # A store socket is another way in (a client may write the node the guest waits for).
    r = boot(SELFTEST, "-c", "echo prompt", "--max-time", "3", "--store-socket", str(tmp_path / "xs.sock"))
    assert r.returncode == 7, r.stderr.decode()


# -- trace record is boot with a tracer ---------------------------------------------------------------------
@pytest.mark.slow
def test_trace_record_feeds_stdin_and_writes_the_console_log(tmp_path):
    trace, log = tmp_path / "t.jsonl", tmp_path / "console.log"
    r = subprocess.run(CLI + ["trace", "record", SELFTEST, "-c", "echo", "--stdin", "-o", str(trace),
                              "--console-log", str(log), "--quiet"],
                       input=b"hello there\nquit\n", capture_output=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode()
    assert "echo: hello there\n" in log.read_text()
    consoles = [json.loads(x)["data"] for x in trace.read_text().splitlines()[1:]
                if json.loads(x)["kind"] == "console"]
    assert "echo: hello there\n" in consoles
    assert r.stdout == b""                                  # --quiet


# -- the ready file -----------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_xenstore_utils
def test_ready_file_says_the_store_socket_listens(tmp_path):
    sock, ready = tmp_path / "xs.sock", tmp_path / "ready"
    ready.write_text("stale\n")                             # left by an earlier run: removed first
    p = subprocess.Popen(CLI + ["boot", "minios", "-c", "ticks=0", "--quiet", "--store-socket", str(sock),
                                "--ready-file", str(ready)], cwd=ROOT,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: ready.exists() and ready.read_text() != "stale\n", what="the ready file")
        lines = ready.read_text().splitlines()
        assert lines[0] == f"store-socket {sock}" and lines[1] == f"pid {p.pid}"
        # The first client call works: no `xs_open: No such file or directory` race.
        ls = subprocess.run(["xenstore-ls", "/local/domain/1"], env=dict(os.environ, XENSTORED_PATH=str(sock)),
                            capture_output=True, timeout=60)
        assert ls.returncode == 0 and b"name = \"minios\"" in ls.stdout, ls.stderr
        r = cli("store", "--socket", str(sock), "write", "/local/domain/1/control/shutdown", "poweroff")
        assert r.returncode == 0, r.stderr
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0


def test_ready_file_names_the_gdb_port(tmp_path):
    ready = tmp_path / "ready"
    p = subprocess.Popen(CLI + ["debug", "hello", "--gdb", "127.0.0.1:0", "--quiet", "--ready-file", str(ready)],
                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        text = wait_until(lambda: ready.exists() and ready.read_text(), what="the ready file")
        gdb = [line.split()[1] for line in text.splitlines() if line.startswith("gdb ")]
        assert gdb and gdb[0].startswith("127.0.0.1:") and int(gdb[0].split(":")[1]) > 0
        from miniguest.debug.rsp import RspClient
        c = RspClient("127.0.0.1", int(gdb[0].split(":")[1]))
        assert c.request("D") == b"OK"                  # gdb's detach: the guest runs to its end
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0
