"""Helpers for the debugger tests: a gdb stub serving a domain on a background thread, the real gdb in batch
mode, and miniguest's small RSP client. Every process and thread started here has a timeout and is ended by
the fixture that made it; the stub listens on an ephemeral port and says which."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from guestlib import HELLO, SAMPLES, SELFTEST  # noqa: E402

from miniguest import Domain  # noqa: E402
from miniguest.debug.gdbstub import GdbStub  # noqa: E402
from miniguest.debug.rsp import RspClient  # noqa: E402

GDB = shutil.which("gdb")
MINIOS = os.path.join(SAMPLES, "minios.elf")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (tools/install-test-deps.sh installs it)")
needs_minios = pytest.mark.skipif(not os.path.exists(MINIOS), reason="miniguest/samples/minios.elf not built yet")
GDB_TIMEOUT = 60


class StubThread:
    """A domain under a GdbStub, both created and run on one background thread (the domain's thread)."""

    def __init__(self, image: str, **options) -> None:
        self.image = image
        self.options = options
        self.messages: list[str] = []
        self.state: Optional[str] = None
        self.error: Optional[BaseException] = None
        self.stub: Optional[GdbStub] = None
        self.domain: Optional[Domain] = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="gdbstub", daemon=True)

    def _main(self) -> None:
        try:
            self.domain = Domain.from_elf(self.image, **self.options)
            self.stub = GdbStub(self.domain, "127.0.0.1", 0, notify=self.messages.append)
        except BaseException as e:      # noqa: BLE001 - reported to the test
            self.error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self.state = self.stub.serve()
        except BaseException as e:      # noqa: BLE001
            self.error = e

    def start(self) -> "StubThread":
        self.thread.start()
        assert self._ready.wait(30), "the stub did not start"
        if self.error:
            raise self.error
        return self

    @property
    def port(self) -> int:
        assert self.stub is not None
        return self.stub.address[1]

    def client(self, no_ack: bool = True) -> RspClient:
        c = RspClient("127.0.0.1", self.port)
        if no_ack:
            assert c.start_no_ack() == b"OK"
        return c

    def call(self, fn: Callable[[], None]) -> None:
        """Run fn on the domain's thread."""
        assert self.domain is not None
        self.domain.host.loop.call_soon(fn)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 20) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return False

    def join(self, timeout: float = 30) -> Optional[str]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stub thread did not end"
        if self.error:
            raise self.error
        return self.state

    def stop(self) -> None:
        if self.thread.is_alive() and self.stub is not None:
            self.call(self.stub.kill)
            self.thread.join(30)
        assert not self.thread.is_alive(), "the stub thread did not end"
        if self.domain is not None:
            self.domain.close()
            self.domain.host.close()


def gdb_command(port: int, elf: str, commands: list[str]) -> list[str]:
    cmd = [GDB or "gdb", "-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off",
           "-ex", "set width 0", "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        cmd += ["-ex", c]
    return cmd + [elf]


def run_gdb(port: int, elf: str, *commands: str, timeout: float = GDB_TIMEOUT) -> str:
    """Run gdb in batch mode from the repository root (the debug info names sources firmware/...)."""
    r = subprocess.run(gdb_command(port, elf, list(commands)), cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    return r.stdout + r.stderr


__all__ = ["GDB", "HELLO", "MINIOS", "ROOT", "SELFTEST", "StubThread", "gdb_command", "needs_gdb",
           "needs_minios", "run_gdb"]
