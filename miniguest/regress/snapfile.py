"""The snapshot container: magic, version, a JSON header and raw (optionally compressed) binary sections.

    offset 0   8 bytes   magic b"\\x89MGSNAP\\n"
    offset 8   u32 LE    container version (1)
    offset 12  u32 LE    header length H
    offset 16  H bytes   header: UTF-8 JSON object; header["sections"] lists the binary sections
    16 + H     ...       section data; each section's offset is relative to this point

A section is {"name", "offset", "size" (bytes stored), "raw_size", "codec" ("zlib" | "raw"), "sha256" (of
the raw bytes)}. The file is untrusted input: every length is bounded before anything is allocated, a
compressed section may not inflate past its declared raw_size, and each raw section must match its hash.
Problems are SnapshotError with a one-line message. See docs/snapshot-format.md for the header's contents.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any, Optional

from miniguest.hypervisor.save import StateError

from . import jsonsafe

MAGIC = b"\x89MGSNAP\n"
CONTAINER_VERSION = 1
MAX_HEADER = 64 << 20
MAX_SECTION = (4096 << 20) + (64 << 20)       # 4 GiB of guest memory plus bookkeeping
_PREFIX = struct.Struct("<8sII")


MAX_FILE = _PREFIX.size + MAX_HEADER + 2 * MAX_SECTION


class SnapshotError(StateError):
    """A snapshot that cannot be taken, read or restored; the message is one line."""


def read_file(path: str) -> bytes:
    """The bytes of a snapshot file: the magic is checked before the rest is read, and the rest is bounded
    (a device, a FIFO or a huge file is refused, not read without end)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PREFIX.size)
            if len(head) < _PREFIX.size or head[:8] != MAGIC:
                raise SnapshotError(f"{path}: not a miniguest snapshot (bad magic)")
            rest = f.read(MAX_FILE - _PREFIX.size + 1)
    except OSError as e:
        raise SnapshotError(f"{path}: {e.strerror}") from None
    except ValueError:                  # a NUL byte in the path
        raise SnapshotError(f"{path!r}: not a valid path") from None
    if len(head) + len(rest) > MAX_FILE:
        raise SnapshotError(f"{path}: larger than any snapshot can be")
    return head + rest


class Container:
    """A header dict plus named raw sections, in memory."""

    def __init__(self, header: dict[str, Any], sections: Optional[dict[str, bytes]] = None) -> None:
        self.header = header
        self.sections: dict[str, bytes] = dict(sections or {})

    # -- writing ------------------------------------------------------------------------------------------
    def to_bytes(self, compress_level: int = 1) -> bytes:
        table = []
        blobs = []
        offset = 0
        for name, raw in self.sections.items():
            stored, codec = raw, "raw"
            if compress_level > 0 and len(raw) > 256:
                packed = zlib.compress(raw, compress_level)
                if len(packed) < len(raw):
                    stored, codec = packed, "zlib"
            table.append({"name": name, "offset": offset, "size": len(stored), "raw_size": len(raw),
                          "codec": codec, "sha256": hashlib.sha256(raw).hexdigest()})
            blobs.append(stored)
            offset += len(stored)
        header = dict(self.header, sections=table)
        head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return _PREFIX.pack(MAGIC, CONTAINER_VERSION, len(head)) + head + b"".join(blobs)

    # -- reading ------------------------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, name: str = "snapshot") -> "Container":
        if len(data) < _PREFIX.size:
            raise SnapshotError(f"{name}: too short to be a miniguest snapshot")
        magic, version, hlen = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise SnapshotError(f"{name}: not a miniguest snapshot (bad magic)")
        if version != CONTAINER_VERSION:
            raise SnapshotError(f"{name}: snapshot container version {version} is not supported "
                                f"(this miniguest reads version {CONTAINER_VERSION})")
        if hlen > MAX_HEADER or _PREFIX.size + hlen > len(data):
            raise SnapshotError(f"{name}: header length {hlen} does not fit the file")
        try:
            header = jsonsafe.loads(bytes(data[_PREFIX.size:_PREFIX.size + hlen]).decode("utf-8"))
        except ValueError as e:                         # also UnicodeDecodeError
            raise SnapshotError(f"{name}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise SnapshotError(f"{name}: header is not a JSON object")
        base = _PREFIX.size + hlen
        table = header.pop("sections", None)
        if not isinstance(table, list):
            raise SnapshotError(f"{name}: header has no section table")
        sections: dict[str, bytes] = {}
        for i, sec in enumerate(table):
            sections_name, raw = _read_section(data, base, sec, f"{name}: section {i}")
            if sections_name in sections:
                raise SnapshotError(f"{name}: section {sections_name!r} appears twice")
            sections[sections_name] = raw
        return cls(header, sections)


def _read_section(data: bytes, base: int, sec: Any, where: str) -> tuple[str, bytes]:
    if not isinstance(sec, dict):
        raise SnapshotError(f"{where}: not an object")
    name, off, size, raw_size = sec.get("name"), sec.get("offset"), sec.get("size"), sec.get("raw_size")
    codec, digest = sec.get("codec"), sec.get("sha256")
    if not isinstance(name, str) or not all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in (off, size, raw_size)):
        raise SnapshotError(f"{where}: needs a name and integer offset, size and raw_size")
    where = f"{where.rsplit(':', 1)[0]}: section {name!r}"
    if off < 0 or size < 0 or raw_size < 0 or raw_size > MAX_SECTION or base + off + size > len(data):
        raise SnapshotError(f"{where}: offset/size outside the file or too large")
    stored = data[base + off:base + off + size]
    if codec == "raw":
        raw = bytes(stored)
    elif codec == "zlib":
        d = zlib.decompressobj()
        try:
            raw = d.decompress(stored, raw_size + 1)
        except zlib.error as e:
            raise SnapshotError(f"{where}: corrupt compressed data ({e})") from None
        if not d.eof or d.unconsumed_tail:
            raise SnapshotError(f"{where}: compressed data is longer than declared")
    else:
        raise SnapshotError(f"{where}: unknown codec {codec!r}")
    if len(raw) != raw_size:
        raise SnapshotError(f"{where}: {len(raw)} bytes, header says {raw_size}")
    if hashlib.sha256(raw).hexdigest() != digest:
        raise SnapshotError(f"{where}: checksum mismatch (the file is damaged)")
    return name, raw
