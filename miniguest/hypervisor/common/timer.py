"""A deterministic timer queue in virtual time: ordered by (deadline, creation order).

A timer that must survive a save/restore carries a tag: plain data saying what it is (`{"what": "watchdog",
"id": 1}`), from which its owner re-arms it (`restore`). Timers are restored in creation order, so timers
with equal deadlines still fire in the same order.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable, Mapping, Optional

from miniguest.hypervisor.save import Fields, StateError

Tag = dict[str, Any]
Rearm = Callable[[Fields, int], None]     # (the saved tag, deadline) -> re-add the timer


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._live: set[int] = set()
        self._tags: dict[int, Tag] = {}

    def add(self, deadline: int, fn: Callable[[], None], tag: Optional[Tag] = None) -> int:
        handle = next(self._seq)
        heapq.heappush(self._heap, (deadline, handle, fn))
        self._live.add(handle)
        if tag is not None:
            self._tags[handle] = tag
        return handle

    def cancel(self, handle: Optional[int]) -> None:
        if handle is not None:
            self._live.discard(handle)
            self._tags.pop(handle, None)

    def _prune(self) -> None:
        while self._heap and self._heap[0][1] not in self._live:
            heapq.heappop(self._heap)

    def next_deadline(self) -> Optional[int]:
        self._prune()
        return self._heap[0][0] if self._heap else None

    def run_due(self, now: int) -> int:
        """Fire every timer with deadline <= now, in order. Returns how many fired."""
        fired = 0
        while True:
            self._prune()
            if not self._heap or self._heap[0][0] > now:
                return fired
            _, handle, fn = heapq.heappop(self._heap)
            self._live.discard(handle)
            self._tags.pop(handle, None)
            fn()
            fired += 1

    def pending(self) -> list[tuple[int, int]]:
        return sorted((d, h) for d, h, _ in self._heap if h in self._live)

    # -- saved state (hypervisor/save.py) -----------------------------------------------------------------
    def save(self) -> list[Tag]:
        """Every armed timer as its tag plus "deadline", in creation order. An untagged timer cannot be
        carried: StateError."""
        out = []
        for deadline, handle in sorted(self.pending(), key=lambda dh: dh[1]):
            tag = self._tags.get(handle)
            if tag is None:
                raise StateError(f"a timer of unknown origin is armed (deadline {deadline})")
            out.append(dict(tag, deadline=deadline))
        return out

    def restore(self, items: list, rearm: Mapping[str, Rearm], where: str = "timers") -> None:
        """Empty the queue, then hand each saved timer, in order, to the owner of its kind."""
        self._heap.clear()
        self._live.clear()
        self._tags.clear()
        self._seq = itertools.count()
        for i, item in enumerate(items):
            t = Fields(item, f"{where}[{i}]")
            what = t.str("what")
            deadline = t.int("deadline")
            fn = rearm.get(what)
            if fn is None:
                raise StateError(f"{where}[{i}] is of unknown kind {what!r}")
            fn(t, deadline)
