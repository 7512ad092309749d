"""Machine memory and guest-virtual access.

All machine RAM is one host buffer mapped at machine address 0 in Unicorn (zero-copy: Python reads and writes
it through a memoryview). Guest-virtual addresses are translated by walking the guest's own 4-level page
tables in that buffer, exactly as the CPU does, so a hypercall argument pointer is checked against the same
mappings the guest runs with: not present, not writable, or in the hypervisor hole -> GuestFault -> -EFAULT.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from typing import Optional, Type, TypeVar

from miniguest.abi.arch_x86 import (HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, PAGE_SIZE, PTE_ADDR_MASK,
                                    _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_USER, canonical)
from miniguest.hypervisor.save import StateError

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_ZERO_PAGE = bytes(PAGE_SIZE)
S = TypeVar("S", bound=ctypes.Structure)


class GuestFault(Exception):
    """A guest-supplied address could not be accessed the way the hypercall needs (-EFAULT)."""

    def __init__(self, va: int, write: bool = False) -> None:
        super().__init__(f"cannot {'write' if write else 'read'} guest address {va:#x}")
        self.va = va
        self.write = write


def guest_range_ok(va: int, size: int) -> bool:
    """Xen's access_ok for a 64-bit PV guest: canonical at both ends and clear of the hypervisor hole (a
    range crossing the non-canonical gap necessarily overlaps the hole, which starts right after it)."""
    if size < 0 or va < 0 or va + size > 1 << 64:
        return False
    if size == 0:
        return True
    end = va + size
    if not canonical(va) or not canonical(end - 1):
        return False
    return not (va < HYPERVISOR_VIRT_END and end > HYPERVISOR_VIRT_START)


class MachineMemory:
    """The machine's RAM: frames [0, nr_frames), each 4 KiB, in one host buffer."""

    def __init__(self, nr_frames: int) -> None:
        self.nr_frames = nr_frames
        self.size = nr_frames * PAGE_SIZE
        # An anonymous mapping: the kernel hands out zero pages lazily, so a 32 MiB domain costs nothing
        # until the guest touches its memory (a zero-filled ctypes array costs ~18 ms to allocate).
        self._map = mmap.mmap(-1, self.size)
        self.buf = (ctypes.c_ubyte * self.size).from_buffer(self._map)
        self.mv = memoryview(self.buf).cast("B")

    @property
    def address(self) -> int:
        return ctypes.addressof(self.buf)

    def frame(self, mfn: int) -> memoryview:
        return self.mv[mfn * PAGE_SIZE:(mfn + 1) * PAGE_SIZE]

    def read_u64(self, ma: int) -> int:
        return _U64.unpack_from(self.mv, ma)[0]

    def write_u64(self, ma: int, value: int) -> None:
        _U64.pack_into(self.mv, ma, value & 0xFFFFFFFFFFFFFFFF)

    def read_u32(self, ma: int) -> int:
        return _U32.unpack_from(self.mv, ma)[0]

    def write_u32(self, ma: int, value: int) -> None:
        _U32.pack_into(self.mv, ma, value & 0xFFFFFFFF)

    def clear_frame(self, mfn: int) -> None:
        ctypes.memset(self.address + mfn * PAGE_SIZE, 0, PAGE_SIZE)

    # -- saved state: a presence bitmap (bit i: frame i is not all zeros) followed by the non-zero frames --
    def save(self) -> bytes:
        data = ctypes.string_at(self.address, self.size)
        n = self.nr_frames
        bitmap = bytearray((n + 7) // 8)
        pages = []
        zero_at = data.startswith           # the fastest all-zero test on a bytes object (~0.2 us per frame)
        for i in range(n):
            off = i * PAGE_SIZE
            if not zero_at(_ZERO_PAGE, off):
                bitmap[i >> 3] |= 1 << (i & 7)
                pages.append(data[off:off + PAGE_SIZE])
        return bytes(bitmap) + b"".join(pages)

    @staticmethod
    def expand_saved(raw: bytes, nr_frames: int) -> bytes:
        """The full memory image a `save()` stands for (checked against its bitmap)."""
        nbm = (nr_frames + 7) // 8
        if len(raw) < nbm:
            raise StateError("the memory section is shorter than its bitmap")
        bitmap = raw[:nbm]
        present = sum(bin(b).count("1") for b in bitmap)
        if len(raw) != nbm + present * PAGE_SIZE or (nr_frames % 8 and bitmap[-1] >> (nr_frames % 8)):
            raise StateError("the memory section does not match its bitmap")
        out = bytearray(nr_frames * PAGE_SIZE)
        pos = nbm
        for i in range(nr_frames):
            if bitmap[i >> 3] >> (i & 7) & 1:
                out[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = raw[pos:pos + PAGE_SIZE]
                pos += PAGE_SIZE
        return bytes(out)

    def restore(self, image: bytes) -> None:
        """Load a full memory image (`expand_saved`, which a caller restoring often can keep)."""
        if len(image) != self.size:
            raise StateError("memory size differs from this configuration")
        ctypes.memmove(self.address, image, len(image))


class AddressSpace:
    """Guest-virtual access through one set of page tables (the vCPU's current CR3).

    Walks the tables on every page touched; the cost (~2 us per page) is paid only by hypercalls that pass
    pointers, never by guest code, and it sees page-table changes immediately without a cache to invalidate.
    """

    def __init__(self, mem: MachineMemory, cr3: int = 0) -> None:
        self.mem = mem
        self.cr3 = cr3

    def walk(self, va: int) -> Optional[tuple[int, int]]:
        """(machine address, combined flags) for va, or None if not mapped. flags: RW and USER are set only
        if every level allows them (as the CPU combines them)."""
        if not canonical(va):
            return None
        mv = self.mem.mv
        limit = self.mem.size
        table = self.cr3 & PTE_ADDR_MASK
        rw = _PAGE_RW
        user = _PAGE_USER
        for shift in (39, 30, 21, 12):
            ea = table + ((va >> shift) & 511) * 8
            if ea + 8 > limit:
                return None
            entry = _U64.unpack_from(mv, ea)[0]
            if not entry & _PAGE_PRESENT:
                return None
            rw &= entry
            user &= entry
            if shift in (21, 30) and entry & _PAGE_PSE:
                # A superpage: only Xen's own mappings have them (the read-only M2P), guests may not.
                size = 1 << shift
                base = entry & PTE_ADDR_MASK & ~(size - 1)
                if base + size > limit:
                    return None
                return base | (va & (size - 1)), rw | user | _PAGE_PRESENT
            table = entry & PTE_ADDR_MASK
        ma = table | (va & (PAGE_SIZE - 1))
        if table + PAGE_SIZE > limit:
            return None
        return ma, rw | user | _PAGE_PRESENT

    def translate(self, va: int, write: bool = False) -> int:
        """Machine address of va as the guest kernel may access it, or GuestFault."""
        t = self.walk(va)
        if t is None or not t[1] & _PAGE_USER or (write and not t[1] & _PAGE_RW):
            raise GuestFault(va, write)
        return t[0]

    def _chunks(self, va: int, size: int, write: bool):
        if not guest_range_ok(va, size):
            raise GuestFault(va, write)
        while size > 0:
            ma = self.translate(va, write)
            n = min(size, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            yield ma, n
            va += n
            size -= n

    def read(self, va: int, size: int) -> bytes:
        mv = self.mem.mv
        if size <= PAGE_SIZE - (va & (PAGE_SIZE - 1)) and size > 0:
            if not guest_range_ok(va, size):
                raise GuestFault(va)
            ma = self.translate(va)
            return bytes(mv[ma:ma + size])
        return b"".join(bytes(mv[ma:ma + n]) for ma, n in self._chunks(va, size, False))

    def write(self, va: int, data: bytes) -> None:
        # Check the whole range first so a fault leaves guest memory untouched (copy_to_guest is all-or-
        # nothing from the caller's point of view for the small structs we return).
        chunks = list(self._chunks(va, len(data), True))
        mv = self.mem.mv
        off = 0
        for ma, n in chunks:
            mv[ma:ma + n] = data[off:off + n]
            off += n

    def read_u64(self, va: int) -> int:
        return _U64.unpack(self.read(va, 8))[0]

    def write_u64(self, va: int, value: int) -> None:
        self.write(va, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def read_struct(self, va: int, cls: Type[S]) -> S:
        return cls.from_buffer_copy(self.read(va, ctypes.sizeof(cls)))

    def write_struct(self, va: int, obj: ctypes.Structure) -> None:
        self.write(va, bytes(obj))

    def read_cstring(self, va: int, limit: int) -> bytes:
        """Bytes up to (not including) a NUL, at most `limit`, page by page so a short string near the end
        of a mapping is fine."""
        out = bytearray()
        while len(out) < limit:
            n = min(limit - len(out), PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            chunk = self.read(va, n)
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                break
            out += chunk
            va += n
        return bytes(out)
