"""Node permissions: the `n0`/`r5`/`w5`/`b5` strings of the wire protocol and the access rule xenstored applies.

The first entry names the owner and, with its letter, the access everybody not listed gets. The owner itself,
dom0 and a domain whose SET_TARGET target owns the node always get full access (C xenstored's perm_for_conn).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional, Protocol

from miniguest.abi import errno as E

from .errors import XenstoreError

PERM_NONE = 0
PERM_READ = 1
PERM_WRITE = 2
PERM_OWNER = 8
PERM_ALL = PERM_READ | PERM_WRITE | PERM_OWNER

_LETTERS = {"n": PERM_NONE, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_READ | PERM_WRITE}
_PERM_RE = re.compile(r"([nrwb])([0-9]{1,5})")


@dataclass(frozen=True)
class Perm:
    """One permission entry, e.g. Perm("r", 5) == `r5`."""

    kind: str
    domid: int

    @property
    def bits(self) -> int:
        return _LETTERS[self.kind]

    def __str__(self) -> str:
        return f"{self.kind}{self.domid}"

    @classmethod
    def parse(cls, text: str | bytes) -> "Perm":
        """Parse `r5`; anything else (unknown letter, empty or non-decimal domid, domid > 65535) -> EINVAL."""
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise XenstoreError(E.EINVAL) from None
        m = _PERM_RE.fullmatch(text)
        if m is None or int(m.group(2)) > 0xFFFF:
            raise XenstoreError(E.EINVAL, f"malformed permission {text!r}")
        return cls(m.group(1), int(m.group(2)))


def parse_perms(items: Iterable[str | bytes | Perm]) -> tuple[Perm, ...]:
    """A permission list from strings or Perm objects; an empty list is EINVAL."""
    out = tuple(p if isinstance(p, Perm) else Perm.parse(p) for p in items)
    if not out:
        raise XenstoreError(E.EINVAL, "empty permission list")
    return out


class Caller(Protocol):
    """Who is asking: a connection (ring or socket) or the Python dom0 API."""

    domid: int
    privileged: bool
    target: Optional[int]


def perm_for(caller: Caller, perms: tuple[Perm, ...]) -> int:
    """The access bits `caller` has on a node with this permission list."""
    owner = perms[0].domid
    if caller.privileged or owner == caller.domid or (caller.target is not None and owner == caller.target):
        return PERM_ALL
    for p in perms[1:]:
        if p.domid == caller.domid or (caller.target is not None and p.domid == caller.target):
            return p.bits
    return perms[0].bits
