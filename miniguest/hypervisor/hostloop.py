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
        self._handlers: dict[int, list[Optional[Callable[[], None]]]] = {}   # fd -> [on_readable, on_writable]
        self._set(self._wake_r, 0, self._drain_wake)
        self._kick: Optional[Callable[[], None]] = None
        self._lock = threading.Lock()
        self.closed = False

    # -- registration -------------------------------------------------------------------------------------
    def _set(self, fd: int, which: int, callback: Optional[Callable[[], None]]) -> None:
        handlers = self._handlers.get(fd, [None, None])
        handlers[which] = callback
        events = (selectors.EVENT_READ if handlers[0] else 0) | (selectors.EVENT_WRITE if handlers[1] else 0)
        try:
            if fd in self._handlers:
                if events:
                    self._selector.modify(fd, events, handlers)
                else:
                    self._selector.unregister(fd)
            elif events:
                self._selector.register(fd, events, handlers)
        except (KeyError, ValueError, OSError):
            pass
        if events:
            self._handlers[fd] = handlers
        else:
            self._handlers.pop(fd, None)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback()` on the loop thread whenever `fd` is readable."""
        self._set(fd, 0, callback)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback()` on the loop thread whenever `fd` is writable (until remove_writer)."""
        self._set(fd, 1, callback)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 1, None)

    @property
    def has_readers(self) -> bool:
        """True when something other than the wake pipe is registered (host input may arrive)."""
        return len(self._handlers) > 1

    def set_kick(self, kick: Optional[Callable[[], None]]) -> None:
        """What to call (from any thread) to make a running CPU return to the loop soon."""
        self._kick = kick

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on the loop thread at the next opportunity. Safe from any thread."""
        with self._lock:
            self._calls.append(fn)
        self.wake()
        kick = self._kick
        if kick is not None:
            kick()

    def call_later(self, fn: Callable[[], None]) -> None:
        """Run `fn()` the next time the loop is polled -- at the end of the running CPU's slice, or when it
        goes idle -- without stopping the CPU early: how a backend defers work the guest asked for by
        notifying it (Xen's dom0 would do it on another CPU, while the guest runs on). Loop thread only."""
        self._calls.append(fn)

    def wake(self) -> None:
        """Wake a loop sleeping in poll(). Takes no lock: safe from a signal handler."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    # -- servicing ----------------------------------------------------------------------------------------
    def poll(self, timeout: Optional[float] = 0.0) -> bool:
        """Service ready descriptors and queued calls. timeout None sleeps until something arrives.
        Returns True if anything was serviced."""
        did = self._run_calls()
        if did and timeout != 0.0:
            timeout = 0.0
        for key, events in self._selector.select(timeout):
            reader, writer = key.data
            if events & selectors.EVENT_READ and reader is not None:
                reader()
            if events & selectors.EVENT_WRITE and writer is not None and key.fd in self._handlers:
                writer()
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
