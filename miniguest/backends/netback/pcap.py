"""A vif's frames as a pcap file (the classic libpcap format, LINKTYPE_ETHERNET) for Wireshark/tcpdump.

Timestamps are the guest's system time (virtual by default), so the same run gives the same file. The file
is written as frames pass; a write error stops the capture with one log line, never the guest.
"""
from __future__ import annotations

import struct
from typing import Callable, Optional

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535
_HEADER = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapWriter:
    def __init__(self, path: str, clock_ns: Callable[[], int], report: Callable[[str], None]) -> None:
        self.path = path
        self.clock_ns = clock_ns
        self.report = report
        self.frames = 0
        self._file: Optional[object] = open(path, "wb")
        self._write(_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))

    def _write(self, data: bytes) -> None:
        f = self._file
        if f is None:
            return
        try:
            f.write(data)                   # type: ignore[attr-defined]
        except OSError as e:
            self.report(f"pcap {self.path}: {e.strerror or e}; capture stopped")
            self.close()

    def frame(self, data) -> None:
        if self._file is None:
            return
        sec, ns = divmod(self.clock_ns(), 1_000_000_000)
        caplen = min(len(data), SNAPLEN)
        self._write(_RECORD.pack(sec & 0xFFFFFFFF, ns // 1000, caplen, len(data)) + bytes(data[:caplen]))
        self.frames += 1

    def flush(self) -> None:
        f = self._file
        if f is not None:
            try:
                f.flush()                   # type: ignore[attr-defined]
            except OSError:
                pass

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()                   # type: ignore[attr-defined]
            except OSError:
                pass
