"""Capstone disassembly of guest code, read through the guest's page tables."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

if TYPE_CHECKING:
    from miniguest.hypervisor.ram import AddressSpace

_md = Cs(CS_ARCH_X86, CS_MODE_64)


def read_code(aspace: "AddressSpace", addr: int, size: int = 16) -> bytes:
    out = b""
    for i in range(size):
        t = aspace.walk(addr + i)
        if t is None:
            break
        out += bytes(aspace.mem.mv[t[0]:t[0] + 1])
    return out


def disassemble(code: bytes, addr: int, count: int = 1) -> list[tuple[int, str, str, bytes]]:
    out = []
    for insn in _md.disasm(code, addr):
        out.append((insn.address, insn.mnemonic, insn.op_str, bytes(insn.bytes)))
        if len(out) >= count:
            break
    return out


def describe_insn(aspace: "AddressSpace", addr: int) -> Optional[str]:
    code = read_code(aspace, addr)
    if not code:
        return None
    insns = disassemble(code, addr)
    if not insns:
        return f"(undecodable: {code[:8].hex(' ')})"
    _, mnem, ops, raw = insns[0]
    return f"{mnem} {ops}".strip() + f"    ({raw.hex(' ')})"
