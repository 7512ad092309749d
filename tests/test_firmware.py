"""The shipped guest ELFs are exactly what the firmware sources build to (gcc + GNU ld, reproducible)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from guestlib import ROOT


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None, reason="needs gcc and make")
def test_committed_elfs_match_a_rebuild():
    r = subprocess.run(["make", "-s", "-C", f"{ROOT}/firmware", "check"], capture_output=True, timeout=300)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0, out
    assert "differs" not in out and "hello.elf matches" in out
