"""The same image and configuration give a byte-identical trace on every run: in one process and across
processes with different hash seeds (no host addresses, no wall-clock time, no dict-order surprises)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from regresslib import HELLO, MINIOS, ROOT, SELFTEST, lines, trace_run

CASES = [(HELLO, ""), (MINIOS, "ticks=2"), (SELFTEST, "evtchn"), (SELFTEST, "usermode"), (SELFTEST, "balloon"),
         (SELFTEST, "mmu"), (SELFTEST, "hypercalls"), (SELFTEST, "xtfgaps")]


@pytest.mark.parametrize("image,cmdline", CASES, ids=[f"{os.path.basename(i)}:{c}" for i, c in CASES])
def test_traced_twice_identical(image, cmdline):
    _, first = trace_run(image, cmdline=cmdline)
    _, second = trace_run(image, cmdline=cmdline, scramble_mfns=False)
    assert len(first) > 10
    assert lines(first) == lines(second)


def _record(path, seed: str, *args: str) -> bytes:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    r = subprocess.run([sys.executable, "-m", "miniguest.cli", "trace", "record", *args, "-o", str(path), "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return path.read_bytes()


@pytest.mark.slow
def test_cli_trace_files_are_byte_identical_across_processes(tmp_path):
    a = _record(tmp_path / "a.jsonl", "1", MINIOS, "-c", "ticks=1")
    b = _record(tmp_path / "b.jsonl", "4242", MINIOS, "-c", "ticks=1")
    assert a == b
    assert str(ROOT).encode() not in a                         # no host paths in the file
