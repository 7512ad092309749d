"""The x86-64 target description gdb gets (qXfer:features:read) and the register file behind g/G/p/P.

gdb 13 validates an i386:x86-64 description against its own amd64 register set: the
org.gnu.gdb.i386.core feature must hold the 16 general registers, rip, eflags, the six segment selectors
AND the whole x87 block (st0-st7, fctrl..fop) -- without the x87 registers gdb rejects the description
and falls back to its built-in guess. org.gnu.gdb.i386.sse adds xmm0-15 and mxcsr,
org.gnu.gdb.i386.segments adds fs_base and gs_base. The feature contents below follow gdb's own
features/i386/64bit-{core,sse,segments}.xml. Register numbers in g/p packets are the order of this
description: 0-15 GPRs, 16 rip, 17 eflags, 18-23 cs ss ds es fs gs, 24-31 st0-7, 32-39 x87 control,
40-55 xmm0-15, 56 mxcsr, 57 fs_base, 58 gs_base.

Writes are limited to what a debugger may change without breaking the PV contract: general registers,
rip, the arithmetic flags of eflags (never IOPL/IF/TF/VM: the guest kernel runs at CPL3 with IOPL 0),
FPU/SSE state and the fs/gs bases (canonical). The segment selectors are Xen's business: read-only.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from miniguest.abi.arch_x86 import canonical

if TYPE_CHECKING:
    from miniguest.hypervisor.host import Vcpu


@dataclass(frozen=True)
class Reg:
    name: str
    size: int                   # bytes in the g packet
    xml: str                    # the <reg> element
    uc_id: Optional[int] = None


_EFLAGS_FLAGS = """  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/><field name="PF" start="2" end="2"/>
    <field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/>
    <field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/>
    <field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/>
  </flags>
"""
_SSE_TYPES = """  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>
    <field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <flags id="i386_mxcsr" size="4">
    <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/><field name="ZE" start="2" end="2"/>
    <field name="OE" start="3" end="3"/><field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
    <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/><field name="DM" start="8" end="8"/>
    <field name="ZM" start="9" end="9"/><field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
    <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
  </flags>
"""


def _reg(name: str, bits: int, typ: str, uc_id: Optional[int] = None, group: str = "",
         regnum: Optional[int] = None) -> Reg:
    extra = f' group="{group}"' if group else ""
    extra += f' regnum="{regnum}"' if regnum is not None else ""
    return Reg(name, bits // 8, f'  <reg name="{name}" bitsize="{bits}" type="{typ}"{extra}/>\n', uc_id)


_GPRS = [("rax", X.UC_X86_REG_RAX, "int64"), ("rbx", X.UC_X86_REG_RBX, "int64"),
         ("rcx", X.UC_X86_REG_RCX, "int64"), ("rdx", X.UC_X86_REG_RDX, "int64"),
         ("rsi", X.UC_X86_REG_RSI, "int64"), ("rdi", X.UC_X86_REG_RDI, "int64"),
         ("rbp", X.UC_X86_REG_RBP, "data_ptr"), ("rsp", X.UC_X86_REG_RSP, "data_ptr")] + \
        [(f"r{i}", getattr(X, f"UC_X86_REG_R{i}"), "int64") for i in range(8, 16)]

CORE = ([_reg(n, 64, t, u) for n, u, t in _GPRS]
        + [_reg("rip", 64, "code_ptr", X.UC_X86_REG_RIP), _reg("eflags", 32, "i386_eflags", X.UC_X86_REG_EFLAGS)]
        + [_reg(n, 32, "int32", getattr(X, f"UC_X86_REG_{n.upper()}")) for n in ("cs", "ss", "ds", "es", "fs", "gs")]
        + [_reg(f"st{i}", 80, "i387_ext", getattr(X, f"UC_X86_REG_FP{i}")) for i in range(8)]
        + [_reg(n, 32, "int", u, "float") for n, u in (
            ("fctrl", X.UC_X86_REG_FPCW), ("fstat", X.UC_X86_REG_FPSW), ("ftag", X.UC_X86_REG_FPTAG),
            ("fiseg", X.UC_X86_REG_FCS), ("fioff", X.UC_X86_REG_FIP), ("foseg", X.UC_X86_REG_FDS),
            ("fooff", X.UC_X86_REG_FDP), ("fop", X.UC_X86_REG_FOP))])
SSE = ([_reg(f"xmm{i}", 128, "vec128", getattr(X, f"UC_X86_REG_XMM{i}")) for i in range(16)]
       + [_reg("mxcsr", 32, "i386_mxcsr", X.UC_X86_REG_MXCSR, "vector")])
SEGMENTS = [_reg("fs_base", 64, "int", X.UC_X86_REG_FS_BASE), _reg("gs_base", 64, "int", X.UC_X86_REG_GS_BASE)]
REGISTERS: list[Reg] = CORE + SSE + SEGMENTS
BY_NAME = {r.name: i for i, r in enumerate(REGISTERS)}
G_PACKET_SIZE = sum(r.size for r in REGISTERS)

TARGET_XML = ('<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n'
              "  <architecture>i386:x86-64</architecture>\n"
              '  <feature name="org.gnu.gdb.i386.core">\n' + _EFLAGS_FLAGS + "".join(r.xml for r in CORE)
              + "  </feature>\n"
              '  <feature name="org.gnu.gdb.i386.sse">\n' + _SSE_TYPES + "".join(r.xml for r in SSE)
              + "  </feature>\n"
              '  <feature name="org.gnu.gdb.i386.segments">\n' + "".join(r.xml for r in SEGMENTS)
              + "  </feature>\n</target>\n")
FEATURES = {"target.xml": TARGET_XML.encode()}

RIP, RSP, RBP, EFLAGS = BY_NAME["rip"], BY_NAME["rsp"], BY_NAME["rbp"], BY_NAME["eflags"]
_FIRST_ST, _FTAG = BY_NAME["st0"], BY_NAME["ftag"]
_READ_ONLY = frozenset(BY_NAME[n] for n in ("cs", "ss", "ds", "es", "fs", "gs"))
# Flags a debugger may change: CF PF AF ZF SF DF OF.
EFLAGS_WRITABLE = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800


class RegisterError(Exception):
    """The register cannot be written (read-only, or the value is not acceptable)."""


def _ftag_full(abridged_empty: int) -> int:
    """Unicorn's FPTAG has 2 bits per register with 1 = empty; gdb wants the i387 tag word (11 = empty,
    00 = valid)."""
    tag = 0
    for i in range(8):
        if (abridged_empty >> (2 * i)) & 3 == 1:
            tag |= 3 << (2 * i)
    return tag


def read_register(vcpu: "Vcpu", n: int) -> bytes:
    reg = REGISTERS[n]
    uc = vcpu.uc
    value = uc.reg_read(reg.uc_id)
    if reg.size == 10:
        mantissa, exponent = value
        return struct.pack("<QH", mantissa & (2**64 - 1), exponent & 0xFFFF)
    if n == _FTAG:
        value = _ftag_full(value)
    return (value & ((1 << (8 * reg.size)) - 1)).to_bytes(reg.size, "little")


class _BatchReader:
    """Every register of the description in one uc_reg_read_batch call (per-register binding calls cost
    ~2 us each: 59 of them made a g packet ~140 us). Each register gets a zeroed 32-byte buffer; Unicorn
    writes a fixed width per register, so the bytes above it stay zero and little-endian slices read right.
    Unicorn's 80-bit float layout (64-bit mantissa, 16-bit sign/exponent) is gdb's i387_ext byte for byte."""

    def __init__(self, uc) -> None:
        n = len(REGISTERS)
        self._uch = uc._uch
        self._n = n
        self._ids = (ctypes.c_int * n)(*[r.uc_id for r in REGISTERS])
        self._bufs = (ctypes.c_ubyte * (32 * n))()
        base = ctypes.addressof(self._bufs)
        self._ptrs = (ctypes.c_void_p * n)(*[base + 32 * i for i in range(n)])

    def read(self) -> Optional[bytes]:
        if uclib.uc_reg_read_batch(self._uch, self._ids, self._ptrs, self._n):
            return None
        raw = bytes(self._bufs)
        out = bytearray()
        for i, reg in enumerate(REGISTERS):
            chunk = raw[32 * i:32 * i + reg.size]
            if i == _FTAG:
                chunk = _ftag_full(int.from_bytes(chunk, "little")).to_bytes(4, "little")
            out += chunk
        return bytes(out)


class RegisterReader:
    """Reads the whole register file (the g packet's contents) in one batched call per vCPU; a debugger
    session keeps one (the batch buffers are set up once per vCPU)."""

    def __init__(self) -> None:
        self._batches: dict[int, tuple["Vcpu", _BatchReader]] = {}

    def read_all(self, vcpu: "Vcpu") -> bytes:
        entry = self._batches.get(vcpu.id)
        if entry is None or entry[0] is not vcpu:
            entry = self._batches[vcpu.id] = (vcpu, _BatchReader(vcpu.uc))
        data = entry[1].read()
        if data is None:                   # an unexpected Unicorn build: one register at a time
            data = b"".join(read_register(vcpu, n) for n in range(len(REGISTERS)))
        return data


def write_register(vcpu: "Vcpu", n: int, data: bytes) -> None:
    reg = REGISTERS[n]
    if len(data) != reg.size:
        raise RegisterError(f"{reg.name} is {reg.size} bytes")
    uc = vcpu.uc
    if n in _READ_ONLY:
        if int.from_bytes(data, "little") != uc.reg_read(reg.uc_id) & 0xFFFF_FFFF:
            raise RegisterError(f"{reg.name} is Xen's (read-only)")
        return
    if reg.size == 10:
        mantissa, exponent = struct.unpack("<QH", data)
        uc.reg_write(reg.uc_id, (mantissa, exponent))
        return
    value = int.from_bytes(data, "little")
    if n == EFLAGS:
        cur = uc.reg_read(reg.uc_id)
        value = (cur & ~EFLAGS_WRITABLE) | (value & EFLAGS_WRITABLE)
    elif n == _FTAG or reg.name in ("fiseg", "fioff", "foseg", "fooff", "fop"):
        return                              # bookkeeping the FPU maintains itself
    elif reg.name in ("fs_base", "gs_base"):
        if not canonical(value):
            raise RegisterError(f"{reg.name} {value:#x} is not canonical")
    elif reg.name == "mxcsr":
        value &= 0xFFFF
    uc.reg_write(reg.uc_id, value)


def write_all(vcpu: "Vcpu", data: bytes) -> None:
    """G packet: every register in order. Read-only ones must be unchanged; a short packet writes a prefix."""
    pos = 0
    for n, reg in enumerate(REGISTERS):
        if pos + reg.size > len(data):
            break
        chunk = data[pos:pos + reg.size]
        pos += reg.size
        if n in _READ_ONLY:
            continue                        # gdb sends back what it read; never change Xen's selectors
        write_register(vcpu, n, chunk)

