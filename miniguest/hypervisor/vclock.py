"""The virtual clock: time advances with guest instructions, never with the host clock.

The count comes from the compiled block hook in _vclock.c (loaded with ctypes, its function pointer given
straight to Unicorn). One guest instruction is one TSC tick and one nanosecond of system time: a notional
1 GHz CPU that executes one instruction per cycle. An idle domain (every vCPU blocked) does not spin: the
clock jumps straight to the next timer deadline (`idle_ns`). So the same image and configuration produce the
same time stamps, the same timer firings and the same bytes on every run and machine.
"""
from __future__ import annotations

import ctypes
import time
from functools import cache
import glob
import importlib.util
import os
from typing import TYPE_CHECKING, Callable, Optional

from unicorn import UC_HOOK_BLOCK
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

if TYPE_CHECKING:
    from miniguest.hypervisor.save import Fields

CACHE_SIZE = 1 << 16
NEVER = (1 << 64) - 1


class _Entry(ctypes.Structure):
    _fields_ = [("key", ctypes.c_uint64), ("count", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _VClock(ctypes.Structure):
    _fields_ = [("icount", ctypes.c_uint64), ("deadline", ctypes.c_uint64), ("stop", ctypes.c_void_p),
                ("count_block", ctypes.c_void_p), ("misses", ctypes.c_uint64), ("stops", ctypes.c_uint64),
                ("block_addr", ctypes.c_uint64), ("block_start", ctypes.c_uint64),
                ("cache", _Entry * CACHE_SIZE)]


COUNT_BLOCK = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32)


class ClockUnavailable(RuntimeError):
    pass


@cache
def _library() -> ctypes.CDLL:
    """The compiled clock, loaded once per process."""
    spec = importlib.util.find_spec("miniguest.hypervisor._vclock")
    path = spec.origin if spec is not None else None
    if path is None:
        here = os.path.dirname(__file__)
        found = glob.glob(os.path.join(here, "_vclock*.so"))
        path = found[0] if found else None
    if path is None:
        raise ClockUnavailable("miniguest's compiled clock (_vclock) is missing: reinstall with "
                               "`pip install .` (it needs a C compiler)")
    lib = ctypes.CDLL(path)
    lib.vclock_flush_cache.argtypes = [ctypes.c_void_p]
    return lib


class VirtualClock:
    """Instruction counter for one vCPU plus the domain-wide idle offset.

    now_ns() = instructions executed + nanoseconds skipped while idle. `set_deadline(ns)` arms the stop;
    the run loop re-arms it before every run slice.
    """

    def __init__(self, count_block: Callable[[int, int], int]) -> None:
        self._lib = _library()
        self._c = _VClock()
        self._c.deadline = NEVER
        self._c.stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        self._count_cb = COUNT_BLOCK(self._safe_count(count_block))
        self._c.count_block = ctypes.cast(self._count_cb, ctypes.c_void_p).value
        self.idle_ns = 0
        self._within: dict[tuple[int, int], int] = {}
        # A KeyboardInterrupt (or SystemExit) raised inside the count callback -- a Python signal handler
        # runs wherever the interpreter is, this callback included -- cannot propagate through C: it is
        # kept here, the CPU is stopped, and the run loop raises it (take_interrupt) after the run slice.
        self.pending_interrupt: Optional[BaseException] = None

    def _safe_count(self, fn: Callable[[int, int], int]) -> Callable[[int, int], int]:
        def count(addr: int, size: int) -> int:
            for _ in range(2):
                try:
                    return max(1, int(fn(addr, size)))
                except Exception:       # a callback from C must never raise: count the block as 1
                    return 1
                except BaseException as e:
                    # Not the guest's doing: remember it, stop the CPU after this block and count the
                    # block properly (the count is cached: a wrong one would change virtual time for good).
                    if self.pending_interrupt is None:
                        self.pending_interrupt = e
                    self._c.deadline = 0
            return 1
        return count

    def take_interrupt(self) -> None:
        """Raise what interrupted the count callback, if anything did (the run loop calls this)."""
        e, self.pending_interrupt = self.pending_interrupt, None
        if e is not None:
            raise e

    def attach(self, uc) -> int:
        """Install the block hook on a Unicorn instance; returns the hook handle."""
        handle = uc_hook_h()
        status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK,
                                   ctypes.cast(self._lib.vclock_block_hook, ctypes.c_void_p),
                                   ctypes.cast(ctypes.pointer(self._c), ctypes.c_void_p),
                                   ctypes.c_uint64(1), ctypes.c_uint64(0))
        if status != 0:
            raise RuntimeError(f"uc_hook_add(block) failed: {status}")
        return handle.value

    @property
    def icount(self) -> int:
        return self._c.icount

    @icount.setter
    def icount(self, value: int) -> None:
        self._c.icount = value

    @property
    def misses(self) -> int:
        return self._c.misses

    def now_ns(self) -> int:
        return self._c.icount + self.idle_ns

    def now_at(self, rip: int, count_between: Callable[[int, int], int]) -> int:
        """The time at the instruction at `rip` inside the running block: the block is counted whole when
        it is entered, so rdtsc asks how many of its instructions come before itself, which makes two
        reads in one block differ by the instructions between them, as on a real CPU."""
        start, addr = self._c.block_start, self._c.block_addr
        if not addr <= rip < addr + 4096:
            return self.now_ns()
        key = (addr, rip)
        k = self._within.get(key)
        if k is None:
            if len(self._within) > 65536:
                self._within.clear()
            k = self._within[key] = count_between(addr, rip)
        return min(start + k, self._c.icount) + self.idle_ns

    def set_deadline(self, ns: Optional[int]) -> None:
        """Stop the CPU once now_ns() >= ns (None: no deadline)."""
        if ns is None:
            self._c.deadline = NEVER
        else:
            self._c.deadline = max(0, ns - self.idle_ns)

    def deadline_reached(self) -> bool:
        return self._c.icount >= self._c.deadline

    def skip_to(self, ns: int) -> None:
        """Idle: jump virtual time forward to ns."""
        now = self.now_ns()
        if ns > now:
            self.idle_ns += ns - now

    realtime = False

    # -- saved state (hypervisor/save.py) -----------------------------------------------------------------
    def save(self) -> dict:
        return {"icount": self.icount, "idle_ns": self.idle_ns}

    def restore(self, f: "Fields") -> None:
        self.icount = f.int("icount")
        self.idle_ns = f.int("idle_ns")

    def flush_cache(self) -> None:
        """Forget block instruction counts (after guest code is rewritten in place by the hypervisor)."""
        self._lib.vclock_flush_cache(ctypes.byref(self._c))


class RealtimeClock(VirtualClock):
    """`--realtime`: system time follows the host's monotonic clock instead of guest work.

    Runs are no longer reproducible. Instructions are still counted (for budgets and as the unit of a run
    slice): with a timer armed the CPU is stopped every SLICE instructions so the host clock can be checked,
    and an idle guest sleeps on the host until its next deadline.
    """

    SLICE = 200_000
    realtime = True

    def __init__(self, count_block: Callable[[int, int], int]) -> None:
        super().__init__(count_block)
        self._t0 = time.monotonic_ns()

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._t0

    def now_at(self, rip: int, count_between: Callable[[int, int], int]) -> int:
        return self.now_ns()

    def set_deadline(self, ns: Optional[int]) -> None:
        if ns is None:
            self._c.deadline = NEVER
        else:
            self._c.deadline = self._c.icount + (self.SLICE if ns > self.now_ns() else 0)

    def skip_to(self, ns: int) -> None:
        remaining = ns - self.now_ns()
        if remaining > 0:
            time.sleep(remaining / 1e9)
