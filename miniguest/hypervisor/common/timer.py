"""A deterministic timer queue in virtual time: ordered by (deadline, creation order)."""
from __future__ import annotations

import heapq
import itertools
from typing import Callable, Optional


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._live: set[int] = set()

    def add(self, deadline: int, fn: Callable[[], None]) -> int:
        handle = next(self._seq)
        heapq.heappush(self._heap, (deadline, handle, fn))
        self._live.add(handle)
        return handle

    def cancel(self, handle: Optional[int]) -> None:
        if handle is not None:
            self._live.discard(handle)

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
            fn()
            fired += 1

    def pending(self) -> list[tuple[int, int]]:
        return sorted((d, h) for d, h, _ in self._heap if h in self._live)
