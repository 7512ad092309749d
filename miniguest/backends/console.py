"""The console daemon (xenconsoled's part) and the merged console log a user sees.

`ConsoleBackend` serves one domain's xencons_interface page: on every notification it drains `out` to the
host and pushes host input into `in`, following the ring's free-running index rules. A guest that moves the
indexes out of range (prod - cons larger than the ring) gets reported once and its ring is no longer
serviced; the guest and the host carry on.

`ConsoleLog` is what `xl console` plus `xl dmesg` would show for one domain, merged: Xen guests (Mini-OS
among them) send each line both through HYPERVISOR_console_io and through the ring, so lines that arrive
from both sources are shown once, from whichever source delivered them first.
"""
from __future__ import annotations

import struct
from collections import deque
from typing import Callable, Optional

from miniguest.abi.console import (CONS_IN, CONS_IN_CONS, CONS_IN_PROD, CONS_OUT, CONS_OUT_CONS, CONS_OUT_PROD,
                                   XENCONS_IN_SIZE, XENCONS_OUT_SIZE)
from miniguest.hypervisor.save import Fields, restore_object, save_object

_U32 = struct.Struct("<I")
MASK32 = 0xFFFFFFFF


class ConsoleBackend:
    # Not plain data: the page, the callbacks. Everything else is saved as it is (save_object).
    NOT_SAVED = frozenset({"page", "notify", "output", "report"})

    def __init__(self, page: memoryview, notify: Callable[[], None], output: Callable[[bytes], None],
                 report: Callable[[str], None] = lambda msg: None) -> None:
        self.page = page
        self.notify = notify
        self.output = output
        self.report = report
        self.pending_input = bytearray()
        self.broken: Optional[str] = None
        self.bytes_out = 0

    def _get(self, off: int) -> int:
        return _U32.unpack_from(self.page, off)[0]

    def _set(self, off: int, value: int) -> None:
        _U32.pack_into(self.page, off, value & MASK32)

    def _fail(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
            self.report(f"console ring: {why}; no longer servicing it")

    def on_event(self) -> None:
        """The guest notified the console event channel."""
        if self.broken:
            return
        notify = self._drain_out()
        notify |= self._fill_in()
        if notify and not self.broken:
            self.notify()

    def _drain_out(self) -> bool:
        cons = self._get(CONS_OUT_CONS)
        prod = self._get(CONS_OUT_PROD)
        used = (prod - cons) & MASK32
        if used > XENCONS_OUT_SIZE:
            self._fail(f"guest moved the out indexes out of range (cons {cons:#x}, prod {prod:#x})")
            return False
        if not used:
            return False
        out = bytearray()
        for i in range(used):
            out.append(self.page[CONS_OUT + ((cons + i) % XENCONS_OUT_SIZE)])
        self._set(CONS_OUT_CONS, cons + used)
        self.bytes_out += used
        self.output(bytes(out))
        return True

    def input_pending(self) -> bool:
        """Host input the guest has not consumed yet (queued here or unread in the ring)."""
        if self.pending_input:
            return True
        if self.broken:
            return False
        return (self._get(CONS_IN_PROD) - self._get(CONS_IN_CONS)) & MASK32 != 0

    def feed(self, data: bytes) -> None:
        """Host input for the guest (a terminal, a test)."""
        self.pending_input += data
        if not self.broken and self._fill_in():
            self.notify()

    def _fill_in(self) -> bool:
        if not self.pending_input:
            return False
        cons = self._get(CONS_IN_CONS)
        prod = self._get(CONS_IN_PROD)
        used = (prod - cons) & MASK32
        if used > XENCONS_IN_SIZE:
            self._fail(f"guest moved the in indexes out of range (cons {cons:#x}, prod {prod:#x})")
            return False
        n = min(XENCONS_IN_SIZE - used, len(self.pending_input))
        if n <= 0:
            return False
        for i in range(n):
            self.page[CONS_IN + ((prod + i) % XENCONS_IN_SIZE)] = self.pending_input[i]
        del self.pending_input[:n]
        self._set(CONS_IN_PROD, prod + n)
        return True

    def save(self) -> dict:
        return save_object(self, self.NOT_SAVED)

    def restore(self, f: Fields) -> None:
        restore_object(self, f.obj, self.NOT_SAVED, f.where)


HV = "hypervisor"
RING = "ring"
UNMATCHED_LINES = 4096
# A guest may print forever: keep at most this much of each buffer in memory (sinks see everything).
KEEP_BYTES = 8 << 20
MAX_PARTIAL = 64 << 10


class ConsoleLog:
    """One domain's console output, merged from the hypervisor console and the PV console ring.

    Complete lines are matched between the two sources: a line the other source already showed is not shown
    again. Unfinished lines (a prompt) are shown when the guest goes idle (`flush`); a partial line that
    the other source already showed in full, or that the other source completes, is not repeated.
    """

    NOT_SAVED = frozenset({"sinks"})

    def __init__(self, sinks: Optional[list[Callable[[bytes], None]]] = None) -> None:
        self.sinks: list[Callable[[bytes], None]] = list(sinks or [])
        self.raw: dict[str, bytearray] = {HV: bytearray(), RING: bytearray()}
        self.merged = bytearray()
        self._partial: dict[str, bytearray] = {HV: bytearray(), RING: bytearray()}
        self._shown: dict[str, int] = {HV: 0, RING: 0}         # bytes of the partial line already shown
        self._covered: dict[str, bool] = {HV: False, RING: False}  # the other source showed this line
        self._unmatched: dict[str, deque[bytes]] = {HV: deque(maxlen=UNMATCHED_LINES),
                                                     RING: deque(maxlen=UNMATCHED_LINES)}
        self.received = 0                      # bytes the guest has written, both sources (a progress count)

    def unfinished_line(self) -> bytes:
        """The line the guest has begun and not ended (a prompt such as `grub> `), shown or not; b"" if the
        last thing it wrote ended a line."""
        part = max(self._partial[HV], self._partial[RING], key=len)
        if part:
            return bytes(part)
        nl = self.merged.rfind(b"\n")
        return bytes(self.merged[nl + 1:])

    @staticmethod
    def _key(line: bytes) -> bytes:
        return line.rstrip(b"\r\n")

    @staticmethod
    def _other(source: str) -> str:
        return RING if source == HV else HV

    def write(self, source: str, data: bytes) -> None:
        self.received += len(data)
        raw = self.raw[source]
        raw += data
        if len(raw) > KEEP_BYTES:
            del raw[:len(raw) - KEEP_BYTES // 2]
        part = self._partial[source]
        part += data
        if len(part) > MAX_PARTIAL and b"\n" not in part:
            part += b"\n"            # an endless line without a newline: show it in pieces
        while True:
            nl = part.find(b"\n")
            if nl < 0:
                break
            line = bytes(part[:nl + 1])
            del part[:nl + 1]
            shown, self._shown[source] = self._shown[source], 0
            covered, self._covered[source] = self._covered[source], False
            self._line(source, line, 0 if covered else shown)

    def _line(self, source: str, line: bytes, shown: int = 0) -> None:
        other = self._other(source)
        key = self._key(line)
        pending = self._unmatched[other]
        for i, seen in enumerate(pending):
            if seen == key:
                for _ in range(i + 1):
                    pending.popleft()
                return
        self._unmatched[source].append(key)
        # The other source may have shown the beginning of this line already (a flushed prompt).
        other_shown = self._shown[other]
        if other_shown and not self._covered[other] and line.startswith(bytes(self._partial[other][:other_shown])):
            self._covered[other] = True
            shown = max(shown, other_shown)
        self._emit(line[shown:])

    def flush(self) -> None:
        """Show what has arrived of unfinished lines -- called when the guest goes idle or stops."""
        for source in (HV, RING):
            part = self._partial[source]
            shown = self._shown[source]
            if len(part) <= shown or self._covered[source]:
                continue
            key = bytes(part)
            other = self._other(source)
            if any(seen.startswith(key) for seen in self._unmatched[other]):
                self._covered[source] = True       # the other source already showed the whole line
                continue
            # Both sources hold the same unfinished line (printk writes it to each): what the other
            # source's flush showed of it is not shown again.
            other_shown = bytes(self._partial[other][:self._shown[other]])
            if other_shown and not self._covered[other] and (key.startswith(other_shown)
                                                             or other_shown.startswith(key)):
                shown = max(shown, min(len(key), len(other_shown)))
            self._emit(key[shown:])
            self._shown[source] = len(part)

    def _emit(self, data: bytes) -> None:
        self.merged += data
        if len(self.merged) > KEEP_BYTES:
            del self.merged[:len(self.merged) - KEEP_BYTES // 2]
        for sink in self.sinks:
            sink(data)

    @property
    def text(self) -> str:
        return self.merged.decode("utf-8", "replace").replace("\r\n", "\n")

    def save(self) -> dict:
        return save_object(self, self.NOT_SAVED)

    def restore(self, f: Fields) -> None:
        restore_object(self, f.obj, self.NOT_SAVED, f.where)
