"""Symbols from the guest kernel's ELF (.symtab), to name addresses as `function+0x1c`."""
from __future__ import annotations

import bisect
import io
from typing import Optional

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection


class Symbols:
    def __init__(self, entries: list[tuple[int, int, str]], offset: int = 0) -> None:
        # (address, size, name), sorted by address; `offset` maps link addresses to load addresses.
        self._entries = sorted(entries)
        self._addrs = [a for a, _, _ in self._entries]
        self.by_name = {name: addr for addr, _, name in self._entries}
        self.offset = offset

    @classmethod
    def from_elf(cls, data: bytes, offset: int = 0) -> "Symbols":
        return cls._from_stream(io.BytesIO(data), offset)

    @classmethod
    def from_file(cls, path: str, offset: int = 0) -> "Symbols":
        """Symbols of an ELF file read in place (a -dbg vmlinux is hundreds of MB): OSError if it cannot be
        read, ValueError if it is not an ELF file with a symbol table."""
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise ValueError(f"{path}: not an ELF file")
            f.seek(0)
            symbols = cls._from_stream(f, offset)
        if not symbols._entries:
            raise ValueError(f"{path}: no symbol table")
        return symbols

    @classmethod
    def _from_stream(cls, stream, offset: int) -> "Symbols":
        entries: list[tuple[int, int, str]] = []
        try:
            elf = ELFFile(stream)
            for sec in elf.iter_sections():
                if not isinstance(sec, SymbolTableSection):
                    continue
                for sym in sec.iter_symbols():
                    kind = sym["st_info"]["type"]
                    if kind not in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") or not sym.name:
                        continue
                    if sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS") or sym.name.startswith("."):
                        continue
                    entries.append((sym["st_value"] + offset, sym["st_size"], sym.name))
        except (ELFError, ValueError, KeyError, AttributeError):
            pass
        return cls(entries, offset)

    def lookup(self, addr: int) -> Optional[tuple[str, int]]:
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        start, size, name = self._entries[i]
        if size and addr >= start + size:
            # Past the end of a sized symbol: only accept it if nothing sized covers addr (asm labels).
            if addr - start > 0x10000:
                return None
        return name, addr - start

    def describe(self, addr: int) -> str:
        hit = self.lookup(addr)
        if hit is None:
            return f"{addr:#x}"
        name, off = hit
        return f"{addr:#x} <{name}+{off:#x}>" if off else f"{addr:#x} <{name}>"

    def address_of(self, name: str) -> Optional[int]:
        return self.by_name.get(name)


EMPTY = Symbols([])
