"""The host side of the run loop: file descriptors and cross-thread calls serviced between guest run slices.

Everything that touches a domain or a backend runs on the thread that runs the domain. Host I/O (a terminal on
stdin, the xenstore Unix socket, a gdb connection) is registered here; the domain's run loop polls it between
run slices and sleeps in it while every vCPU is blocked. Other threads hand work over with `call_soon`, which
also wakes a sleeping loop and asks a running CPU to stop at its next block (`set_kick`).
"""
from __future__ import annotations

import os
import selectors
import threading
from collections import deque
from typing import Callable, Optional


class HostLoop:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        self._kick: Optional[Callable[[], None]] = None
        self._lock = threading.Lock()
        self.closed = False

    # -- registration -------------------------------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback()` on the loop thread whenever `fd` is readable."""
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    @property
    def has_readers(self) -> bool:
        """True when something other than the wake pipe is registered (host input may arrive)."""
        return len(self._selector.get_map()) > 1

    def set_kick(self, kick: Optional[Callable[[], None]]) -> None:
        """What to call (from any thread) to make a running CPU return to the loop soon."""
        self._kick = kick

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on the loop thread at the next opportunity. Safe from any thread."""
        with self._lock:
            self._calls.append(fn)
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass
        kick = self._kick
        if kick is not None:
            kick()

    # -- servicing ----------------------------------------------------------------------------------------
    def poll(self, timeout: Optional[float] = 0.0) -> bool:
        """Service ready descriptors and queued calls. timeout None sleeps until something arrives.
        Returns True if anything was serviced."""
        did = self._run_calls()
        if did and timeout != 0.0:
            timeout = 0.0
        for key, _ in self._selector.select(timeout):
            key.data()
            did = True
        return self._run_calls() or did

    def _run_calls(self) -> bool:
        did = False
        while True:
            with self._lock:
                if not self._calls:
                    return did
                fn = self._calls.popleft()
            fn()
            did = True

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
