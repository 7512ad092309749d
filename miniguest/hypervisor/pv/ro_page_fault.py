"""Writable page tables (xen/arch/x86/pv/ro-page-fault.c): a guest kernel store that faults on a read-only
mapping of one of the domain's own L1 page tables is emulated instead of bounced.

Xen's rules (fixup_page_fault -> pv_ro_page_fault -> ptwr_do_page_fault):
- only with VMASST_TYPE_writable_pagetables, from guest kernel mode, for a write fault on a present page
  (no reserved-bit or instruction-fetch fault) outside Xen's range;
- the L1 entry that maps the faulting address in the guest's kernel page tables must be present and
  read-only, and the frame it maps must be one of the domain's validated L1 tables (page_lock);
- the instruction is emulated (x86_emulate with the ptwr ops): it must write memory; every store must be
  naturally aligned, at most 8 bytes, within the faulting page -- so cmpxchg16b is refused, as on Xen --
  and a store narrower than an entry is merged with the rest of it. The new entry is checked as
  mmu_update checks it (get_page_from_l1e: flags, frame ownership, writable references), adjusted as
  Xen adjusts guest entries (adjust_guest_l1e), written -- or compared and written for cmpxchg, whose
  failure leaves the entry and the references alone -- and the old entry's references are dropped.
  Accessed/dirty bits are whatever the guest writes (a plain store, no preserve_ad);
- anything else -- an entry Xen refuses, an instruction it does not take -- leaves the guest's state as it
  was and the original #PF goes to the guest. After an emulated instruction the guest resumes after it
  (with #DB if it was single-stepping).

The instruction forms emulated here are those that write memory and occur on page tables: mov (register
or immediate), xchg, cmpxchg, cmpxchg8b, add/sub/and/or/xor (register or immediate), inc/dec/not/neg,
bts/btr/btc (register or immediate bit offset), with or without a lock prefix, 1 to 8 bytes. Xen's
emulator takes every memory-writing instruction; string stores, setcc and stack operations on a page
table are not emulated here (the #PF goes to the guest).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG, X86_REG_FS, X86_REG_GS, X86_REG_INVALID, X86_REG_RIP
from unicorn import x86_const as X

from miniguest.abi.arch_x86 import (PFEC_insn_fetch, PFEC_present, PFEC_reserved_bit, PFEC_write_access,
                                    PTE_ADDR_MASK, TRAP_debug, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW)
from miniguest.abi.xen import VMASST_TYPE_writable_pagetables
from miniguest.hypervisor.ram import GuestFault, guest_range_ok
from miniguest.hypervisor.x86.page_types import PGT_l1, PageTypeError

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

_md = Cs(CS_ARCH_X86, CS_MODE_64)
_md.detail = True
_U64 = struct.Struct("<Q")
MASK64 = (1 << 64) - 1
EFLAGS_CF, EFLAGS_PF, EFLAGS_AF, EFLAGS_ZF, EFLAGS_SF, EFLAGS_TF, EFLAGS_OF = 1, 4, 0x10, 0x40, 0x80, 0x100, 0x800
ARITH_FLAGS = EFLAGS_CF | EFLAGS_PF | EFLAGS_AF | EFLAGS_ZF | EFLAGS_SF | EFLAGS_OF
DR6_BS = 1 << 14

# capstone register name -> (Unicorn 64-bit register, bit shift, size in bytes)
_GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp") + tuple(f"r{i}" for i in range(8, 16))
_REGS: dict[str, tuple[int, int, int]] = {}
for _full in _GPR64:
    _uc = getattr(X, "UC_X86_REG_" + _full.upper())
    _REGS[_full] = (_uc, 0, 8)
    if _full.startswith("r") and _full[1:].isdigit():
        _REGS[_full + "d"], _REGS[_full + "w"], _REGS[_full + "b"] = (_uc, 0, 4), (_uc, 0, 2), (_uc, 0, 1)
    else:
        base = _full[1:]                                     # ax, bx, ..., sp
        _REGS["e" + base] = (_uc, 0, 4)
        _REGS[base] = (_uc, 0, 2)
        if base in ("ax", "bx", "cx", "dx"):
            _REGS[base[0] + "l"] = (_uc, 0, 1)
            _REGS[base[0] + "h"] = (_uc, 8, 1)
        else:
            _REGS[base + "l"] = (_uc, 0, 1)                   # sil, dil, bpl, spl

_ALU = {"add", "sub", "and", "or", "xor"}
_UNARY = {"inc", "dec", "not", "neg"}
_BITS = {"bts", "btr", "btc"}
_SUPPORTED = {"mov", "xchg", "cmpxchg", "cmpxchg8b", "cmpxchg16b"} | _ALU | _UNARY | _BITS


class Unhandleable(Exception):
    """X86EMUL_UNHANDLEABLE: the original fault goes to the guest."""


def pv_ro_page_fault(vcpu: "Vcpu", rip: int, error_code: int) -> bool:
    """Xen's fixup_page_fault for a guest kernel write fault: True when the store was emulated (the guest
    resumes after it), False when the #PF is the guest's. Called from the #PF path with the CPU's error
    code (the user bit of a ring-3 kernel still set)."""
    dom = vcpu.domain
    if (not vcpu.kernel_mode or not dom.vm_assist & (1 << VMASST_TYPE_writable_pagetables)
            or error_code & (PFEC_reserved_bit | PFEC_insn_fetch)
            or error_code & (PFEC_write_access | PFEC_present) != PFEC_write_access | PFEC_present):
        return False
    addr = vcpu.uc.reg_read(X.UC_X86_REG_CR2)
    if not guest_range_ok(addr, 1):
        return False                                      # IN_HYPERVISOR_RANGE
    pte = _eff_kern_l1e(vcpu, addr)
    if pte is None or pte & (_PAGE_PRESENT | _PAGE_RW) != _PAGE_PRESENT:
        return False
    table = (pte & PTE_ADDR_MASK) >> 12
    frames = dom.frames
    if not frames.owned_by(table, dom.domid) or not frames.lockable(table) or frames.type[table] != PGT_l1:
        return False
    try:
        _emulate(vcpu, rip, addr, table)
    except Unhandleable as e:
        dom.log_once(("ptwr", str(e)), f"write to page table at {addr:#x} not emulated: {e}")
        return False
    return True


def _eff_kern_l1e(vcpu: "Vcpu", addr: int) -> Optional[int]:
    """Xen's guest_get_eff_kern_l1e: the L1 entry mapping addr in the guest's kernel page tables, or None
    when an upper level is not present or is a superpage."""
    mem = vcpu.domain.mem
    table = vcpu.guest_table << 12
    for shift in (39, 30, 21):
        e = mem.read_u64(table + ((addr >> shift) & 511) * 8)
        if not e & _PAGE_PRESENT or (shift != 39 and e & _PAGE_PSE):
            return None
        table = e & PTE_ADDR_MASK
        if table + 4096 > mem.size:
            return None
    return mem.read_u64(table + ((addr >> 12) & 511) * 8)


# -- the emulator -------------------------------------------------------------------------------------------
class _Ctx:
    """One instruction's register reads and the writes to commit once the entry has been updated."""

    def __init__(self, vcpu: "Vcpu") -> None:
        self.uc = vcpu.uc
        self.writes: dict[int, int] = {}
        self.flags_set: Optional[tuple[int, int]] = None     # (mask, value)

    def full(self, uc_reg: int) -> int:
        return self.writes.get(uc_reg, self.uc.reg_read(uc_reg))

    def get(self, name: str) -> int:
        uc_reg, shift, size = _REGS[name]
        return (self.full(uc_reg) >> shift) & ((1 << (8 * size)) - 1)

    def set(self, name: str, value: int) -> None:
        """A register write with x86-64's rules: 32-bit writes zero the upper half, 8/16-bit ones merge."""
        uc_reg, shift, size = _REGS[name]
        mask = (1 << (8 * size)) - 1
        if size == 4:
            self.writes[uc_reg] = value & mask
        elif size == 8:
            self.writes[uc_reg] = value & MASK64
        else:
            self.writes[uc_reg] = (self.full(uc_reg) & ~(mask << shift) & MASK64) | ((value & mask) << shift)

    def flags(self, mask: int, value: int) -> None:
        self.flags_set = (mask, value)

    def commit(self, next_rip: int) -> None:
        for uc_reg, value in self.writes.items():
            self.uc.reg_write(uc_reg, value)
        if self.flags_set is not None:
            mask, value = self.flags_set
            rflags = self.uc.reg_read(X.UC_X86_REG_EFLAGS)
            self.uc.reg_write(X.UC_X86_REG_EFLAGS, (rflags & ~mask) | (value & mask))
        self.uc.reg_write(X.UC_X86_REG_RIP, next_rip)


def _fetch(vcpu: "Vcpu", rip: int) -> bytes:
    out = b""
    while len(out) < 15:
        try:
            out += vcpu.aspace.read(rip + len(out), min(15 - len(out), 4096 - ((rip + len(out)) & 4095)))
        except GuestFault:
            break
    return out


def _effective_address(vcpu: "Vcpu", ctx: _Ctx, insn, mem) -> int:
    def reg(r: int) -> int:
        if r == X86_REG_INVALID:
            return 0
        if r == X86_REG_RIP:
            return insn.address + insn.size
        name = insn.reg_name(r)
        if name not in _REGS:
            raise Unhandleable(f"an address through {name}")
        return ctx.get(name)
    address = reg(mem.base) + reg(mem.index) * mem.scale + mem.disp
    if mem.segment == X86_REG_FS:
        address += vcpu.uc.msr_read(0xC0000100)
    elif mem.segment == X86_REG_GS:
        address += vcpu.uc.msr_read(0xC0000101)
    return address & MASK64


def _parity(value: int) -> int:
    return EFLAGS_PF if bin(value & 0xFF).count("1") % 2 == 0 else 0


def _szp(result: int, bits: int) -> int:
    return ((EFLAGS_ZF if result == 0 else 0) | (EFLAGS_SF if result >> (bits - 1) & 1 else 0)
            | _parity(result))


def _add_flags(a: int, b: int, bits: int, carry_in: int = 0) -> tuple[int, int]:
    mask = (1 << bits) - 1
    full = a + b + carry_in
    result = full & mask
    flags = _szp(result, bits) | (EFLAGS_CF if full > mask else 0)
    flags |= EFLAGS_OF if (~(a ^ b) & (a ^ result)) >> (bits - 1) & 1 else 0
    flags |= EFLAGS_AF if (a ^ b ^ result) & 0x10 else 0
    return result, flags


def _sub_flags(a: int, b: int, bits: int) -> tuple[int, int]:
    mask = (1 << bits) - 1
    result = (a - b) & mask
    flags = _szp(result, bits) | (EFLAGS_CF if a < b else 0)
    flags |= EFLAGS_OF if ((a ^ b) & (a ^ result)) >> (bits - 1) & 1 else 0
    flags |= EFLAGS_AF if (a ^ b ^ result) & 0x10 else 0
    return result, flags


def _emulate(vcpu: "Vcpu", rip: int, cr2: int, table: int) -> None:
    code = _fetch(vcpu, rip)
    insn = next(_md.disasm(code, rip), None)
    if insn is None:
        raise Unhandleable(f"cannot decode the instruction at {rip:#x}")
    name = insn.mnemonic.split()[-1]                 # capstone spells prefixes in: "lock cmpxchg"
    if name not in _SUPPORTED:
        raise Unhandleable(f"{name} is not emulated on page tables")
    ops = insn.operands
    mem_ops = [o for o in ops if o.type == X86_OP_MEM]
    if len(mem_ops) != 1:
        raise Unhandleable(f"{insn.mnemonic} {insn.op_str}: no single memory operand")
    mem = mem_ops[0]
    ctx = _Ctx(vcpu)
    addr = _effective_address(vcpu, ctx, insn, mem.mem)
    size = mem.size
    if name == "cmpxchg16b":
        # x86_emulate reads the 16 bytes; if they differ from rdx:rax it loads them there (no store); if
        # they match, the 16-byte store is more than ptwr_emulated_cmpxchg takes: the #PF is the guest's.
        old16 = _read(vcpu, addr, 16)
        if old16 == (ctx.get("rdx") << 64) | ctx.get("rax"):
            raise Unhandleable("a 16-byte store (cmpxchg16b) on a page table")
        ctx.set("rax", old16 & MASK64)
        ctx.set("rdx", old16 >> 64)
        ctx.flags(EFLAGS_ZF, 0)
        _retire(vcpu, ctx, insn)
        return
    bits = 8 * size
    mask = (1 << bits) - 1
    others = [o for o in ops if o.type != X86_OP_MEM]
    src_reg = next((insn.reg_name(o.reg) for o in others if o.type == X86_OP_REG), None)
    src_imm = next((o.imm & mask for o in others if o.type == X86_OP_IMM), None)
    if src_reg is not None and src_reg not in _REGS:
        raise Unhandleable(f"{insn.mnemonic} {insn.op_str}: a {src_reg} operand")

    if name in _BITS:
        # A register bit offset is signed and may reach other words of the operand's size.
        if src_reg is not None:
            offset = ctx.get(src_reg)
            offset -= (1 << (8 * _REGS[src_reg][2])) if offset >> (8 * _REGS[src_reg][2] - 1) & 1 else 0
            addr = (addr + (offset >> {16: 4, 32: 5, 64: 6}[bits]) * size) & MASK64
            bit = offset & (bits - 1)
        else:
            bit = (src_imm or 0) & (bits - 1)
    old = _read(vcpu, addr, size)
    expect: Optional[int] = None                 # a cmpxchg: the value the entry must still hold
    new: Optional[int] = None
    flags: Optional[tuple[int, int]] = None
    if name == "mov":
        new = ctx.get(src_reg) if src_reg is not None else src_imm
    elif name == "xchg":
        new = ctx.get(src_reg)
        ctx.set(src_reg, old)
    elif name == "cmpxchg":
        acc = {1: "al", 2: "ax", 4: "eax", 8: "rax"}[size]
        accv = ctx.get(acc)
        _, f = _sub_flags(accv, old, bits)
        flags = (ARITH_FLAGS, f)
        if accv == old:
            new, expect = ctx.get(src_reg), old
        else:
            ctx.set(acc, old)                    # no store: the entry and its references stay
    elif name == "cmpxchg8b":
        cmp = (ctx.get("edx") << 32) | ctx.get("eax")
        if cmp == old:
            new, expect = (ctx.get("ecx") << 32) | ctx.get("ebx"), old
            flags = (EFLAGS_ZF, EFLAGS_ZF)
        else:
            ctx.set("eax", old & 0xFFFFFFFF)
            ctx.set("edx", old >> 32)
            flags = (EFLAGS_ZF, 0)
    elif name in _ALU:
        src = ctx.get(src_reg) if src_reg is not None else src_imm
        if name == "add":
            new, f = _add_flags(old, src, bits)
        elif name == "sub":
            new, f = _sub_flags(old, src, bits)
        else:
            new = {"and": old & src, "or": old | src, "xor": old ^ src}[name]
            f = _szp(new, bits)                  # CF = OF = 0 (AF left clear, as x86_emulate does)
        flags = (ARITH_FLAGS, f)
    elif name in _UNARY:
        if name == "not":
            new = ~old & mask
        elif name == "neg":
            new, f = _sub_flags(0, old, bits)
            flags = (ARITH_FLAGS, f)
        else:
            new, f = (_add_flags if name == "inc" else _sub_flags)(old, 1, bits)
            flags = (ARITH_FLAGS & ~EFLAGS_CF, f)
    else:                                        # bts / btr / btc
        cf = EFLAGS_CF if old >> bit & 1 else 0
        new = {"bts": old | 1 << bit, "btr": old & ~(1 << bit), "btc": old ^ 1 << bit}[name]
        flags = (EFLAGS_CF, cf)
    if new is not None:
        _ptwr_update(vcpu, cr2, table, addr, size, new & mask, expect)
    if flags is not None:
        ctx.flags(*flags)
    _retire(vcpu, ctx, insn)


def _retire(vcpu: "Vcpu", ctx: _Ctx, insn) -> None:
    """The instruction is done: registers and flags as it leaves them, the guest after it (#DB first when
    it single-steps, as pv_ro_page_fault's retire.singlestep)."""
    rflags = vcpu.uc.reg_read(X.UC_X86_REG_EFLAGS)
    next_rip = insn.address + insn.size
    ctx.commit(next_rip)
    vcpu.flush_tlb()
    dom = vcpu.domain
    if dom.trace_sinks:
        dom.emit("ptwr", vcpu=vcpu.id, rip=insn.address, insn=bytes(insn.bytes))
    if rflags & EFLAGS_TF:
        vcpu.debugreg[6] |= DR6_BS
        vcpu.inject_exception(TRAP_debug, None, next_rip)


def _read(vcpu: "Vcpu", addr: int, size: int) -> int:
    """ptwr_emulated_read: the operand's current value through the guest's own mappings."""
    try:
        return int.from_bytes(vcpu.aspace.read(addr, size), "little")
    except GuestFault:
        raise Unhandleable(f"cannot read {addr:#x}") from None


def _ptwr_update(vcpu: "Vcpu", cr2: int, table: int, addr: int, size: int, value: int,
                 expect: Optional[int]) -> None:
    """ptwr_emulated_update: a naturally aligned store of at most 8 bytes within the faulting page, made a
    whole-entry update; the new entry checked and the old one's references dropped. (A cmpxchg that does
    not match never gets here: x86_emulate compares first and stores nothing.)"""
    dom = vcpu.domain
    if (addr ^ cr2) >> 12 or addr & (size - 1):
        raise Unhandleable(f"bad access (cr2={cr2:#x}, addr={addr:#x}, bytes={size})")
    index = (addr & 0xFFF) >> 3
    ma = (table << 12) + index * 8
    full = dom.mem.read_u64(ma)
    shift = (addr & 7) * 8
    lane = ((1 << (8 * size)) - 1) << shift
    entry = (full & ~lane) | (value << shift)
    if expect is not None and (full & lane) >> shift != expect:
        raise Unhandleable("the entry changed under the instruction")   # (one vCPU: cannot happen)
    try:
        dom.frames.ptwr_update(table, index, entry, dom.domid)
    except PageTypeError as e:
        raise Unhandleable(f"entry {entry:#x} refused: {e}") from None
