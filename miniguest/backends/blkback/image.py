"""The storage behind a virtual disk: a raw image file, opened read-only or read-write.

Reads and writes go straight between the file and the guest's granted pages (preadv/pwritev into the
mapped frames: no copy in Python). A write is in the file (the host's page cache) when the request
completes; a flush makes it durable (fdatasync), as does closing the disk. Discard punches a hole
(fallocate PUNCH_HOLE), which reads back as zeros; a file system that cannot is EOPNOTSUPP, as Linux's
blkback reports it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
from typing import Sequence

SECTOR = 512
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


@functools.lru_cache(maxsize=1)
def _fallocate():
    """libc's fallocate(2) (loaded once)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return libc.fallocate


class ImageError(Exception):
    """The image cannot be opened as asked (one line)."""


class DiskImage:
    def __init__(self, path: str, writable: bool) -> None:
        self.path = path
        self.writable = writable
        try:
            self.fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(f"{path}: {e.strerror}") from None
        except ValueError:
            raise ImageError(f"{path!r}: not a valid path") from None
        size = os.lseek(self.fd, 0, os.SEEK_END)
        self.sectors = size // SECTOR
        self.size = self.sectors * SECTOR
        self.dirty = False

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def readv(self, offset: int, buffers: Sequence[memoryview]) -> None:
        """Fill `buffers` from the image at byte `offset` (OSError on a host I/O error or a short read)."""
        want = sum(len(b) for b in buffers)
        got = os.preadv(self.fd, buffers, offset)
        if got != want:
            raise OSError(errno.EIO, f"short read ({got} of {want} bytes at {offset})")

    def writev(self, offset: int, buffers: Sequence[memoryview]) -> None:
        want = sum(len(b) for b in buffers)
        got = os.pwritev(self.fd, buffers, offset)
        if got != want:
            raise OSError(errno.EIO, f"short write ({got} of {want} bytes at {offset})")
        self.dirty = True

    def flush(self) -> None:
        if self.dirty:
            os.fdatasync(self.fd)
            self.dirty = False

    def discard(self, offset: int, length: int) -> None:
        """Punch a hole: OSError(EOPNOTSUPP) where the file system cannot."""
        if length <= 0:
            return
        if _fallocate()(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.dirty = True

    def close(self) -> None:
        if self.fd >= 0:
            try:
                if self.writable:
                    self.flush()
            finally:
                os.close(self.fd)
                self.fd = -1
