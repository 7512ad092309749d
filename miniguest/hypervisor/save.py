"""The state-record convention every stateful object follows: `save()` gives plain data, `restore()` takes it
back, checking every field (a saved record comes from a file and is untrusted input).

`save()` returns JSON-able data (dicts, lists, ints, strings, bools, None); large arrays go in binary
sections the caller stores beside it. `restore(f)` reads through `Fields`, which checks each value's type and
range and raises StateError with a one-line message naming the field (`vcpus[0].pv.kernel_sp must be ...`).
An object restores only its own fields and asks its parts to restore theirs; whoever composes the records
(regress/snapshot.py for a snapshot file) never touches another object's attributes.

The plain-data codec (`encode_plain` ... `restore_object`) serves objects whose state is plain values only
(bytes, counters, flags, queues): every attribute is carried, so one added later needs no change here.
"""
from __future__ import annotations

import array
import sys
from collections import deque
from typing import Any


class StateError(Exception):
    """A record that cannot be saved or restored; the message is one line."""


class Fields:
    """Typed access to one object of a record: `f.int("port", 0, 4095)` or StateError naming the path."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise StateError(f"{where} is not an object")
        self.obj = obj
        self.where = where

    def _get(self, key: str) -> Any:
        if key not in self.obj:
            raise StateError(f"{self.where}.{key} is missing")
        return self.obj[key]

    def has(self, key: str) -> bool:
        return key in self.obj

    def int(self, key: str, lo: int = 0, hi: int = (1 << 64) - 1, optional: bool = False) -> Any:
        v = self.obj.get(key) if optional else self._get(key)
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise StateError(f"{self.where}.{key} must be an integer in [{lo}, {hi}]")
        return v

    def bool(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            raise StateError(f"{self.where}.{key} must be true or false")
        return v

    def str(self, key: str, optional: bool = False, limit: int = 1 << 24) -> Any:
        v = self.obj.get(key) if optional else self._get(key)
        if v is None and optional:
            return None
        if not isinstance(v, str) or len(v) > limit:
            raise StateError(f"{self.where}.{key} must be a string")
        return v

    def list(self, key: str, limit: int = 1 << 20) -> list:
        v = self._get(key)
        if not isinstance(v, list) or len(v) > limit:
            raise StateError(f"{self.where}.{key} must be a list")
        return v

    def sub(self, key: str) -> "Fields":
        return Fields(self._get(key), f"{self.where}.{key}")

    def ints(self, key: str, lo: int = 0, hi: int = (1 << 64) - 1, limit: int = 1 << 20) -> list[int]:
        values = self.list(key, limit)
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise StateError(f"{self.where}.{key} must hold integers in [{lo}, {hi}]")
        return values


_LITTLE = sys.byteorder == "little"


def pack_array(code: str, values: list[int]) -> bytes:
    """A list of integers as a little-endian binary section (`array` type code: "B", "I", "i", "Q" ...)."""
    a = array.array(code, values)
    if not _LITTLE:
        a.byteswap()
    return a.tobytes()


def unpack_array(code: str, raw: bytes, count: int, where: str) -> list[int]:
    """The inverse of pack_array, for a section that must hold exactly `count` items."""
    a = array.array(code)
    if len(raw) != count * a.itemsize:
        raise StateError(f"section {where} has {len(raw)} bytes, expected {count * a.itemsize}")
    a.frombytes(raw)
    if not _LITTLE:
        a.byteswap()
    return a.tolist()


def latin1(data: bytes) -> str:
    """Bytes as a JSON string, one code point per byte (exact and reversible)."""
    return bytes(data).decode("latin-1")


def unlatin1(text: str, where: str) -> bytes:
    try:
        return text.encode("latin-1")
    except (UnicodeEncodeError, AttributeError):
        raise StateError(f"{where} is not a byte string") from None


# -- the tagged plain-data codec ----------------------------------------------------------------------------
_PLAIN = (int, str, bool, type(None))


def encode_plain(value: Any) -> Any:
    """bytes/bytearray/deque/dict/tuple/list/scalars -> JSON with {"$type": ...} tags; anything else raises."""
    if isinstance(value, bool) or isinstance(value, _PLAIN):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"$type": type(value).__name__, "v": latin1(value)}
    if isinstance(value, deque):
        return {"$type": "deque", "maxlen": value.maxlen, "v": [encode_plain(v) for v in value]}
    if isinstance(value, dict):
        return {"$type": "dict", "v": [[encode_plain(k), encode_plain(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"$type": "tuple", "v": [encode_plain(v) for v in value]}
    if isinstance(value, list):
        return [encode_plain(v) for v in value]
    raise TypeError(f"not plain data: {type(value).__name__}")


def decode_plain(value: Any, where: str) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list):
        return [decode_plain(v, where) for v in value]
    if isinstance(value, dict):
        tag, v = value.get("$type"), value.get("v")
        if tag in ("bytes", "bytearray") and isinstance(v, str):
            raw = unlatin1(v, where)
            return raw if tag == "bytes" else bytearray(raw)
        if tag == "deque" and isinstance(v, list) and (value.get("maxlen") is None
                                                      or isinstance(value.get("maxlen"), int)):
            return deque((decode_plain(x, where) for x in v), maxlen=value.get("maxlen"))
        if tag == "dict" and isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v):
            out = {}
            for k, x in v:
                key = decode_plain(k, where)
                if isinstance(key, (list, dict, bytearray, deque)):
                    raise StateError(f"{where}: unhashable dictionary key")
                out[key] = decode_plain(x, where)
            return out
        if tag == "tuple" and isinstance(v, list):
            return tuple(decode_plain(x, where) for x in v)
    raise StateError(f"{where}: unexpected value")


def _same_shape(fresh: Any, value: Any) -> bool:
    """A restored value must have the fresh object's type (containers: also their items' types)."""
    if fresh is None or value is None:       # an optional field (e.g. `broken`): None or a scalar
        return isinstance(fresh, _PLAIN) and isinstance(value, _PLAIN)
    if type(fresh) is not type(value):
        return False
    if isinstance(fresh, dict) and isinstance(value, dict):
        return set(fresh) == set(value) and all(_same_shape(fresh[k], value[k]) for k in fresh)
    return True


def save_object(obj: Any, skip: frozenset[str]) -> dict[str, Any]:
    """Every attribute of `obj` (an object of plain data) except `skip`, which must name every attribute that
    is not plain data (its page, its callbacks)."""
    out = {}
    for name, value in sorted(vars(obj).items()):
        if name in skip or callable(value):
            continue
        try:
            out[name] = encode_plain(value)
        except TypeError:
            raise StateError(f"{type(obj).__name__}.{name}: {type(value).__name__} is not plain data") from None
    return out


def restore_object(obj: Any, data: Any, skip: frozenset[str], where: str) -> None:
    """The inverse of save_object: each field must be one of `obj`'s and keep its type."""
    if not isinstance(data, dict):
        raise StateError(f"{where} is not an object")
    for name, encoded in data.items():
        if name in skip or not hasattr(obj, name):
            raise StateError(f"{where}.{name} is not a field of {type(obj).__name__}")
        value = decode_plain(encoded, f"{where}.{name}")
        if not _same_shape(getattr(obj, name), value):
            raise StateError(f"{where}.{name} has the wrong type")
        setattr(obj, name, value)
