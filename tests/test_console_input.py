"""Host input reaches the guest's console ring (as with `xl console`)."""
from __future__ import annotations

import subprocess
import sys

from guestlib import ROOT, SELFTEST


def boot_echo(stdin: bytes, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "miniguest.cli", "boot", SELFTEST, "-c", "echo", *extra],
                          input=stdin, capture_output=True, timeout=60, cwd=ROOT)


def test_piped_input_is_echoed_by_the_guest():
    r = boot_echo(b"hello there\nsecond line\nquit\n", "--stdin")
    out = r.stdout.decode().replace("\r\n", "\n")
    assert r.returncode == 0, r.stderr.decode()
    assert "echo: hello there\necho: second line\n" in out


def test_without_input_a_waiting_guest_is_reported_hung():
    # Not a terminal and no --stdin: nothing can ever arrive, so waiting for input is a hang (exit 8).
    r = boot_echo(b"quit\n")
    assert r.returncode == 8
    assert "hung" in r.stderr.decode()


def test_end_of_input_then_hung():
    r = boot_echo(b"only one line\n", "--stdin")
    assert r.returncode == 8
    assert "echo: only one line" in r.stdout.decode()
