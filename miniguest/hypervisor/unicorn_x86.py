"""Low-level Unicorn x86 plumbing measured for Unicorn 2.1.4.

Three things the Python binding does not give us directly:
- The exception error code and "is this a software interrupt" flag live only in QEMU's CPUX86State, which
  uc_context_save copies out. We find their offsets once per process by provoking known faults, instead of
  hard-coding a build's layout, and fail clearly if the layout is not what we expect.
- Unicorn never resets `old_exception`; without resetting it to -1 after each fault the second fault turns
  into a double fault and the third silently stops the CPU. `clear_exception_state` does that reset.
- Register access through the binding costs ~2 us per call; `RegBatch` reads or writes a fixed set of
  registers in one C call.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from functools import cache
from typing import Sequence

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib


@dataclass(frozen=True)
class ContextOffsets:
    error_code: int
    exception_is_int: int
    old_exception: int
    size: int


# mov ax,0x1238; mov ds,ax; int 0x41; mov ax,0x1240; mov ds,ax; hlt  (GDT limit 0x1f: both loads #GP(sel))
_CALIBRATION_CODE = bytes.fromhex("66b83812" "8ed8" "cd41" "66b84012" "8ed8" "f4")


class UnicornLayoutError(RuntimeError):
    pass


@cache
def context_offsets() -> ContextOffsets:
    """Find error_code / exception_is_int / old_exception in the saved context (once per process)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, _CALIBRATION_CODE)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x8000, 0x1F, 0))
    seen: list[tuple[int, bytes]] = []

    def hook(uc: Uc, intno: int, _: object) -> None:
        ctx = uc.context_save()
        seen.append((intno, ctypes.string_at(ctx.context, ctx.size)))
        if intno == 13:
            uc.reg_write(X.UC_X86_REG_RIP, uc.reg_read(X.UC_X86_REG_RIP) + 2)
        uc.emu_stop()

    h = uc.hook_add(UC_HOOK_INTR, hook)
    rip = 0x1000
    for _ in range(2):          # the #GP, then the INT 0x41
        uc.emu_start(rip, 0x1000 + len(_CALIBRATION_CODE))
        rip = uc.reg_read(X.UC_X86_REG_RIP)
    uc.hook_del(h)
    try:
        (v1, b1), (v2, b2) = seen[0], seen[1]
    except (ValueError, IndexError):
        raise UnicornLayoutError("could not calibrate Unicorn's exception state (unexpected Unicorn build)")
    cands = [i for i in range(0, len(b1) - 4, 4) if struct.unpack_from("<i", b1, i)[0] == 0x1238]
    found = None
    for off in cands:
        if (v1 == 13 and v2 == 0x41 and struct.unpack_from("<i", b1, off + 4)[0] == 0
                and struct.unpack_from("<i", b2, off + 4)[0] == 1
                and struct.unpack_from("<i", b1, off + 112)[0] == 13):
            found = off
            break
    if found is None:
        raise UnicornLayoutError("could not locate the exception error code in Unicorn's CPU state")
    return ContextOffsets(error_code=found, exception_is_int=found + 4, old_exception=found + 112, size=len(b1))


def read_exception_state(uc: Uc) -> tuple[int, bool]:
    """(error code, raised by an INT instruction) of the exception being hooked; also clears Unicorn's
    exception-in-progress state so the next fault is not taken for a double fault."""
    off = context_offsets()
    ctx = uc.context_save()
    addr = ctypes.cast(ctx.context, ctypes.c_void_p).value
    buf = (ctypes.c_char * ctx.size).from_address(addr)
    err, is_int = struct.unpack_from("<ii", buf, off.error_code)
    struct.pack_into("<i", buf, off.old_exception, -1)
    uc.context_restore(ctx)
    return err & 0xFFFFFFFF, bool(is_int)


# xor ecx,ecx; xor edx,edx; mov eax,1; xsetbv; xor eax,eax | mov eax,3; xsetbv; xor eax,eax; hlt
_XCR0_CODE = bytes.fromhex("31c9" "31d2" "b801000000" "0f01d1" "31c0" "b803000000" "0f01d1" "31c0" "f4")
CR4_OSXSAVE = 1 << 18


@cache
def xcr0_offset() -> int:
    """Where QEMU's CPUX86State keeps XCR0 in the saved context (no register id exposes it): found once per
    process by running xsetbv at CPL 0 with two values and comparing the contexts."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x2000)
    uc.mem_write(0x1000, _XCR0_CODE)
    uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | CR4_OSXSAVE | 0x200)
    blobs = []
    for start, count in ((0x1000, 5), (0x100e, 3)):       # through the first xsetbv, then the second
        uc.emu_start(start, 0x1fff, count=count)
        ctx = uc.context_save()
        blobs.append(ctypes.string_at(ctx.context, ctx.size))
    a, b = blobs
    hits = [i for i in range(0, len(a) - 8, 8) if struct.unpack_from("<Q", a, i)[0] == 1
            and struct.unpack_from("<Q", b, i)[0] == 3]
    if len(hits) != 1:
        raise UnicornLayoutError("could not locate XCR0 in Unicorn's CPU state (unexpected Unicorn build)")
    return hits[0]


def read_xcr0(uc: Uc) -> int:
    ctx = uc.context_save()
    return struct.unpack_from("<Q", ctypes.string_at(ctx.context, ctx.size), xcr0_offset())[0]


def write_xcr0(uc: Uc, value: int) -> None:
    """Load XCR0 (what xsave/xrstor/xgetbv use) as xsetbv at CPL 0 would; the value is already validated."""
    off = xcr0_offset()
    ctx = uc.context_save()
    addr = ctypes.cast(ctx.context, ctypes.c_void_p).value
    buf = (ctypes.c_char * ctx.size).from_address(addr)
    struct.pack_into("<Q", buf, off, value)
    uc.context_restore(ctx)


class RegBatch:
    """Read/write a fixed list of registers with one uc_reg_{read,write}_batch call."""

    def __init__(self, uc: Uc, regs: Sequence[int]) -> None:
        n = len(regs)
        self._uch = uc._uch
        self._n = n
        self._ids = (ctypes.c_int * n)(*regs)
        self._vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])

    def read(self) -> list[int]:
        status = uclib.uc_reg_read_batch(self._uch, self._ids, self._ptrs, self._n)
        if status:
            raise UcError(status)
        return self._vals[:]

    def write(self, values: Sequence[int]) -> None:
        for i, v in enumerate(values):
            self._vals[i] = v & 0xFFFFFFFFFFFFFFFF
        status = uclib.uc_reg_write_batch(self._uch, self._ids, self._ptrs, self._n)
        if status:
            raise UcError(status)


# The binding refuses rdtsc/rdtscp instruction hooks (UC_ERR_ARG) although the C core supports them.
_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)


def hook_rdtsc(uc: Uc, callback, insn: int) -> int:
    """Install `callback(uc) -> int` (return 1 = instruction handled) for RDTSC or RDTSCP."""
    def cb(_uc: int, _ud: int) -> int:
        try:
            return callback(uc)
        except BaseException as e:          # keep the binding's convention: stop and re-raise later
            if uc._hook_exception is None:
                uc._hook_exception = e
            uc.emu_stop()
            return 1
    fn = _INSN_CB(cb)
    handle = uc_hook_h()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INSN, ctypes.cast(fn, ctypes.c_void_p),
                               None, ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
    if status:
        raise UcError(status)
    uc._callbacks[handle.value] = fn
    return handle.value


_VOID_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


def hook_syscall_raw(uc: Uc, callback) -> int:
    """Install `callback()` for every `syscall` with a bare ctypes callback: the binding's generic wrapper
    costs about a microsecond per hypercall. Exceptions follow the binding's convention (stop the CPU,
    re-raised by emu_start)."""
    def cb(_uc: int, _ud: int) -> None:
        try:
            callback()
        except BaseException as e:
            if uc._hook_exception is None:
                uc._hook_exception = e
            uc.emu_stop()
    fn = _VOID_CB(cb)
    handle = uc_hook_h()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INSN, ctypes.cast(fn, ctypes.c_void_p),
                               None, ctypes.c_uint64(1), ctypes.c_uint64(0),
                               ctypes.c_int(X.UC_X86_INS_SYSCALL))
    if status:
        raise UcError(status)
    uc._callbacks[handle.value] = fn
    return handle.value


def seg_descriptor(code: bool, dpl: int, long_mode: bool = True) -> int:
    """A flat (base 0, limit 4G) GDT descriptor, accessed bit preset so the CPU never writes it back."""
    if code:
        access = 0x80 | (dpl << 5) | 0x10 | 0x0B           # present, S, execute/read, accessed
        flags = 0xA if long_mode else 0xC                  # G + L   /  G + D
    else:
        access = 0x80 | (dpl << 5) | 0x10 | 0x03           # present, S, read/write, accessed
        flags = 0xC
    return 0xFFFF | (0xF << 48) | (access << 40) | (flags << 52)
