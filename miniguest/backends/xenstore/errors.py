"""The one exception type of the xenstore backend.

xenstored reports every failure as an errno *name* on the wire ("ENOENT\\0"), so the Python side carries the
same name: a test or a toolstack can compare `err.name == "EAGAIN"` exactly as a C client compares errno.
"""
from __future__ import annotations

from miniguest.abi import errno as _errno


class XenstoreError(Exception):
    """A xenstore operation failed with errno `errno` (positive int); `name` is its symbolic name."""

    def __init__(self, errno: int | str, message: str | None = None) -> None:
        if isinstance(errno, str):
            value = getattr(_errno, errno, None)
            if not isinstance(value, int):
                value = _errno.EINVAL
            name = errno
        else:
            value = abs(errno)
            name = _errno.name(value)
        self.errno = value
        self.name = name
        super().__init__(message or name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, XenstoreError) and other.errno == self.errno

    def __hash__(self) -> int:
        return hash(self.errno)
