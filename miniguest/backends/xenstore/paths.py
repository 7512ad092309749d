"""Path syntax and canonicalisation, with C xenstored's rules.

Valid characters are `[A-Za-z0-9_/@-]`; no `//`, no trailing `/` (except `/` itself); a path not starting with
`/` (or `@` for the special watch names) is relative to /local/domain/<domid>. Length: at most
XENSTORE_ABS_PATH_MAX overall and at most `path_max` once a leading /local/domain/<id>/ is discounted, so a
guest's relative paths get the full budget. Every violation is EINVAL.
"""
from __future__ import annotations

import re
from typing import Optional

from miniguest.abi import errno as E
from miniguest.abi.xs_wire import XENSTORE_ABS_PATH_MAX

from .errors import XenstoreError

_VALID = re.compile(rb"[A-Za-z0-9_/@-]*")
_LOCAL_PREFIX = re.compile(r"/local/domain/[0-9]{1,5}/")

SPECIAL_INTRODUCE = "@introduceDomain"
SPECIAL_RELEASE = "@releaseDomain"


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def canonicalize(path: bytes | str, domid: int, *, allow_special: bool = False,
                 path_max: Optional[int] = None) -> tuple[str, bool]:
    """Return (absolute path, was_relative) or raise EINVAL."""
    raw = path.encode("latin-1", "replace") if isinstance(path, str) else bytes(path)
    if not _VALID.fullmatch(raw):
        raise XenstoreError(E.EINVAL, "invalid character in path")
    text = raw.decode("ascii")
    if text.startswith("@") and not allow_special:
        raise XenstoreError(E.EINVAL, "special path not allowed here")
    relative = not text.startswith(("/", "@"))
    name = f"{domain_path(domid)}/{text}" if relative else text
    if name.endswith("/") and name != "/":
        raise XenstoreError(E.EINVAL, "trailing slash")
    if "//" in name:
        raise XenstoreError(E.EINVAL, "double slash")
    if len(name) > XENSTORE_ABS_PATH_MAX:
        raise XenstoreError(E.EINVAL, "path too long")
    if path_max is not None:
        m = _LOCAL_PREFIX.match(name)
        local_off = m.end() if m else 0
        if len(name) - local_off > path_max:
            raise XenstoreError(E.EINVAL, "path too long")
    return name, relative


def parent_of(name: str) -> str:
    """Parent of a canonical path; "/" for top-level nodes and the special names (as C's get_parent)."""
    cut = name.rfind("/", 1)
    return name[:cut] if cut > 0 else "/"


def basename(name: str) -> str:
    return name[name.rfind("/") + 1:]


def child_path(parent: str, child: str) -> str:
    return f"/{child}" if parent == "/" else f"{parent}/{child}"


def is_child(child: str, parent: str) -> bool:
    """True if `child` is `parent` or lies below it ("/" is everybody's ancestor)."""
    if parent == "/":
        return True
    return child == parent or child.startswith(parent + "/")
