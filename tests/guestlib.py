"""Shared helpers for tests that boot guests."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, Optional

from miniguest import Domain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "tests", "guests")
SAMPLES = os.path.join(ROOT, "miniguest", "samples")
SELFTEST = os.path.join(GUESTS, "selftest.elf")
HELLO = os.path.join(SAMPLES, "hello.elf")
CLI = [sys.executable, "-m", "miniguest.cli"]          # `miniguest` as a child process


class HypercallRecorder:
    """A hypercall observer: the (nr, args, result) sequence of a run."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, tuple[int, ...], Optional[int]]] = []

    def before(self, vcpu: Any, nr: int, args: tuple[int, ...]) -> None:
        pass

    def after(self, vcpu: Any, nr: int, args: tuple[int, ...], result: Optional[int]) -> None:
        self.calls.append((nr, tuple(args), result))

    def of(self, nr: int) -> list[tuple[int, tuple[int, ...], Optional[int]]]:
        return [c for c in self.calls if c[0] == nr]


def boot(path: str, **options) -> Domain:
    """Build and run a domain to its end; the caller closes it."""
    dom = Domain.from_elf(path, **options)
    dom.run()
    return dom


def selftest(scenario: str, **options) -> Domain:
    return boot(SELFTEST, cmdline=scenario, **options)


def facts(text: str) -> dict[str, str]:
    """`name = value [ok|FAIL ...]` lines printed by the selftest guest."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z0-9_]+) = (\S+)(?: (ok|FAIL).*)?$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def cli(*args: str, timeout: float = 120, input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "miniguest.cli", *args], capture_output=True, timeout=timeout,
                          cwd=ROOT, input=input)


def wait_until(predicate: Callable[[], Any], timeout: float = 60, what: str = "the condition") -> Any:
    """Poll `predicate` until it returns something true (returned) -- for tests that must wait for a state
    of another thread or process before acting. Fails the test after `timeout` seconds, a bound for a
    machine under load, never a measurement."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def read_until(stream: Any, needle: str, timeout: float = 60, sofar: str = "") -> str:
    """Read a child's output pipe until `needle` appears (what has been read so far is returned); fails the
    test after `timeout` seconds. Use it to wait for the state a signal or input must find."""
    import select
    out = sofar
    end = time.monotonic() + timeout
    fd = stream.fileno()
    while needle not in out:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {needle!r}; got:\n{out}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            data = os.read(fd, 65536)
            if not data:
                raise AssertionError(f"output ended before {needle!r}; got:\n{out}")
            out += data.decode("utf-8", "replace")
    return out
