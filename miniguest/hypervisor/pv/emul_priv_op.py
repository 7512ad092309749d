"""Privileged operations of a PV guest at CPL3, emulated as Xen does (xen/arch/x86/pv/emul-priv-op.c).

A 64-bit PV kernel runs in ring 3, so privileged instructions fault with #GP(0). For the few that PV
kernels are allowed to use, Xen decodes and emulates them: rdmsr/wrmsr (the MSRs themselves are in
x86/msr.py), `mov` from/to control and debug registers (debug registers: pv/misc_hypercalls.py), clts,
wbinvd. Everything else gets the #GP. cpuid and rdtsc do not fault on Unicorn; they are hooked and answered
from Xen's view (the CPUID policy of x86/cpuid.py, the virtual TSC). `in`/`out` are not trapped by Unicorn
at all: blocks that contain them are found when the clock first counts them and get a hook on exactly that
instruction, which raises the #GP an unprivileged domain gets from Xen.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_OP_MEM, X86_REG_FS, X86_REG_GS, X86_REG_RBP, X86_REG_RSP
from unicorn import x86_const as X

from miniguest.abi.arch_x86 import TRAP_gp_fault, TRAP_invalid_op, TRAP_stack_error, canonical
from miniguest.abi.xen import VMASST_TYPE_architectural_iopl
from miniguest.hypervisor.pv.misc_hypercalls import get_debugreg, set_debugreg
from miniguest.hypervisor.ram import GuestFault
from miniguest.hypervisor.x86.cpu import CR0_GUEST, CR4_DE, CR4_GUEST, CR4_OSXSAVE
from miniguest.hypervisor.x86.cpuid import emulate_cpuid, has
from miniguest.hypervisor.x86.mm import switch_base
from miniguest.hypervisor.x86.msr import guest_rdmsr, guest_wrmsr
from miniguest.hypervisor.x86.page_types import PageTypeError
from miniguest.hypervisor.x86.xstate import handle_xsetbv

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF2, 0xF3))
GPR_BY_NUMBER = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX, X.UC_X86_REG_RSP,
                 X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_R8, X.UC_X86_REG_R9,
                 X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
                 X.UC_X86_REG_R15)
_md = Cs(CS_ARCH_X86, CS_MODE_64)
IO_MNEMONICS = frozenset(("in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"))


# -- decoding ---------------------------------------------------------------------------------------------
def fetch_insn_bytes(vcpu: "Vcpu", rip: int, n: int = 16) -> bytes:
    """Up to n bytes of the instruction stream at rip, as far as it is mapped."""
    out = b""
    while len(out) < n:
        try:
            out += vcpu.aspace.read(rip + len(out), 1)
        except GuestFault:
            break
    return out


def _decode(code: bytes) -> tuple[int, int, bytes]:
    """(prefix length, REX byte or 0, the bytes from the opcode on)."""
    i = 0
    while i < len(code) and code[i] in PREFIXES:
        i += 1
    rex = 0
    if i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    return i, rex, code[i:]


def count_block_instructions(code: bytes, addr: int) -> tuple[int, list[int]]:
    """How many instructions a translated block holds, and where its I/O instructions are."""
    n = 0
    io: list[int] = []
    for address, size, mnemonic, _ in _md.disasm_lite(code, addr):
        n += 1
        if mnemonic in IO_MNEMONICS:
            io.append(address)
    return n, io


# -- #GP: emulate or reflect ------------------------------------------------------------------------------
def emulate_gp(vcpu: "Vcpu", rip: int, error_code: int) -> bool:
    """Handle a #GP from the guest. Returns True once it is fully dealt with (emulated or injected)."""
    if error_code == 0:
        if _is_xsetbv(vcpu, rip):
            return _emulate_xsetbv(vcpu, rip)
        length = _emulate_privileged(vcpu, rip) if vcpu.kernel_mode else 0
        if not length:
            length = _emulate_cli_sti(vcpu, rip)
        if length:
            vcpu.domain.trace_privop(vcpu, rip, fetch_insn_bytes(vcpu, rip, length))
            vcpu.set_rip(rip + length)
            return True
        if _stack_segment_fault(vcpu, rip):
            vcpu.inject_exception(TRAP_stack_error, 0, rip)
            return True
    vcpu.inject_exception(TRAP_gp_fault, error_code, rip)
    return True


# A non-canonical address is a segment-limit violation: #SS(0) when the access goes through SS (a memory
# operand based on rsp/rbp without an fs/gs override, or the stack itself), #GP(0) otherwise. Unicorn
# raises #GP(0) for all of them; the CPU Xen runs on would deliver #SS, which Xen passes on unchanged.
_md_detail = Cs(CS_ARCH_X86, CS_MODE_64)
_md_detail.detail = True
_SS_BASES = (X86_REG_RSP, X86_REG_RBP)
STACK_MNEMONICS = frozenset(("push", "pop", "call", "ret", "enter", "leave", "pushfq", "popfq", "iretq"))


def _stack_segment_fault(vcpu: "Vcpu", rip: int) -> bool:
    insn = next(_md_detail.disasm(fetch_insn_bytes(vcpu, rip), rip), None)
    if insn is None:
        return False
    uc = vcpu.uc

    def reg(r: int) -> int:
        return uc.reg_read(getattr(X, "UC_X86_REG_" + insn.reg_name(r).upper())) if r else 0

    for op in insn.operands:
        if op.type == X86_OP_MEM and op.mem.base in _SS_BASES and op.mem.segment not in (X86_REG_FS, X86_REG_GS):
            address = (reg(op.mem.base) + reg(op.mem.index) * op.mem.scale + op.mem.disp) & (2**64 - 1)
            if not canonical(address):
                return True
    if insn.mnemonic in STACK_MNEMONICS:
        rsp = uc.reg_read(X.UC_X86_REG_RSP)
        return not (canonical(rsp) and canonical((rsp - 8) & (2**64 - 1)))
    return False


XSETBV = b"\x0f\x01\xd1"


def _is_xsetbv(vcpu: "Vcpu", rip: int) -> bool:
    plen, _, op = _decode(fetch_insn_bytes(vcpu, rip))
    return op[:3] == XSETBV


def _emulate_xsetbv(vcpu: "Vcpu", rip: int) -> bool:
    """xsetbv (0f 01 d1) as x86_emulate does it for a PV guest: #UD unless the guest's CR4.OSXSAVE is set,
    #GP(0) from guest user mode, else XCR0 via handle_xsetbv (#GP(0) for a bad index or value)."""
    code = fetch_insn_bytes(vcpu, rip)
    plen, _, op = _decode(code)
    if code[:plen] and any(b in (0x66, 0xF2, 0xF3) for b in code[:plen]):
        vcpu.inject_exception(TRAP_invalid_op, None, rip)         # a VEX/SIMD prefix: #UD
        return True
    if not vcpu.cr4_ctl & CR4_OSXSAVE:
        vcpu.inject_exception(TRAP_invalid_op, None, rip)
        return True
    uc = vcpu.uc
    index = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
    value = (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF)
    if not vcpu.kernel_mode or not handle_xsetbv(vcpu, index, value):
        vcpu.inject_exception(TRAP_gp_fault, 0, rip)
        return True
    vcpu.domain.trace_privop(vcpu, rip, code[:plen + 3])
    vcpu.set_rip(rip + plen + 3)
    return True


def _emulate_privileged(vcpu: "Vcpu", rip: int) -> int:
    """Emulate the instruction at rip; returns its length, or 0 if Xen would not emulate it."""
    code = fetch_insn_bytes(vcpu, rip)
    plen, rex, op = _decode(code)
    if len(op) < 2 or op[0] != 0x0F:
        return 0
    uc = vcpu.uc
    if op[1] == 0x32:                                  # rdmsr
        msr = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        value = guest_rdmsr(vcpu, msr)
        if value is None:
            vcpu.domain.log_once(("rdmsr", msr), f"RDMSR {msr:#010x} unimplemented: #GP")
            return 0
        uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
        uc.reg_write(X.UC_X86_REG_RDX, value >> 32)
        return plen + 2
    if op[1] == 0x30:                                  # wrmsr
        msr = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        value = (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF)
        if guest_wrmsr(vcpu, msr, value):
            return plen + 2
        vcpu.domain.log_once(("wrmsr", msr), f"WRMSR {msr:#010x} value {value:#x} refused: #GP")
        return 0
    if op[1] in (0x20, 0x21, 0x22, 0x23) and len(op) >= 3:   # mov from/to a control or debug register
        modrm = op[2]
        if modrm >> 6 != 3:
            return 0
        number = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
        gpr = GPR_BY_NUMBER[(modrm & 7) | (8 if rex & 1 else 0)]
        debug = op[1] in (0x21, 0x23)
        if op[1] in (0x20, 0x21):
            value = (get_debugreg if debug else read_cr)(vcpu, number)
            if value is None:
                return 0
            uc.reg_write(gpr, value)
            return plen + 3
        return plen + 3 if (set_debugreg if debug else write_cr)(vcpu, number, uc.reg_read(gpr)) else 0
    if op[1] == 0x06:                                  # clts
        uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) & ~8)
        vcpu.cr0_ts = False
        return plen + 2
    if op[1] in (0x08, 0x09):                          # invd / wbinvd: no cache control for a domU
        return plen + 2
    return 0


def read_cr(vcpu: "Vcpu", cr: int) -> Optional[int]:
    if cr == 0:
        return CR0_GUEST | (8 if vcpu.cr0_ts else 0)
    if cr == 2:
        return vcpu.guest_cr2
    if cr == 3:
        return (vcpu.guest_table if vcpu.kernel_mode else vcpu.guest_table_user) << 12
    if cr == 4:
        return CR4_GUEST | vcpu.cr4_ctl
    return None


def write_cr(vcpu: "Vcpu", cr: int, value: int) -> bool:
    if cr == 0:
        if (value ^ read_cr(vcpu, 0)) & ~8:        # only TS may change
            return False
        ts = bool(value & 8)
        uc = vcpu.uc
        uc.reg_write(X.UC_X86_REG_CR0, (uc.reg_read(X.UC_X86_REG_CR0) & ~8) | (8 if ts else 0))
        vcpu.cr0_ts = ts
        return True
    if cr == 3:
        try:
            switch_base(vcpu, value >> 12, user=False)
        except PageTypeError:
            return False
        return True
    if cr == 4:
        # Xen's pv_fixup_guest_cr4: a PV guest's %cr4 write never faults. The guest controls only
        # TSD|DE|FSGSBASE|OSXSAVE, each if its CPUID policy has the feature; anything else is discarded
        # and reads back as Xen's own visible bits (CR4_GUEST). Of those, this CPU model gives the guest
        # DE and OSXSAVE (which gates xsetbv); FSGSBASE is not in our policy and TSD is not modelled (it
        # reads back clear).
        vcpu.cr4_ctl = value & (CR4_DE | (CR4_OSXSAVE if has("XSAVE") else 0))
        return True
    return False


# -- the virtual IOPL ---------------------------------------------------------------------------------------
# Xen shadows the IOPL a PV guest asks for (PHYSDEVOP_set_iopl, or the iret frames with
# VMASST_TYPE_architectural_iopl) and consults it when `cli`, `sti` or an I/O instruction faults: the guest
# kernel counts as CPL 1 (CPL 0 with the vm_assist), guest user mode as CPL 3 (iopl_ok in emul-priv-op.c).
# With enough IOPL, `cli`/`sti` complete as no-ops (they never touch the event mask: Xen's validate()
# returns X86EMUL_DONE for them) and I/O reaches no device (a domU owns no ports): `in` reads all ones,
# `out` is dropped. String I/O (ins/outs) is not emulated and keeps its #GP.
def iopl_ok(vcpu: "Vcpu") -> bool:
    if vcpu.kernel_mode:
        cpl = 0 if vcpu.domain.vm_assist & (1 << VMASST_TYPE_architectural_iopl) else 1
    else:
        cpl = 3
    return cpl <= vcpu.iopl


def _emulate_cli_sti(vcpu: "Vcpu", rip: int) -> int:
    code = fetch_insn_bytes(vcpu, rip)
    plen, _, op = _decode(code)
    if op[:1] in (b"\xfa", b"\xfb") and iopl_ok(vcpu):
        return plen + 1
    return 0


IN_OUT_LENGTHS = {0xE4: 2, 0xE5: 2, 0xE6: 2, 0xE7: 2, 0xEC: 1, 0xED: 1, 0xEE: 1, 0xEF: 1}


def io_instruction(vcpu: "Vcpu", rip: int) -> None:
    """An I/O instruction about to run: without the IOPL for it, #GP(0) at the instruction as Xen gives an
    unprivileged domain; with it, the access completes against no device."""
    code = fetch_insn_bytes(vcpu, rip)
    plen, _, op = _decode(code)
    if op and op[0] in IN_OUT_LENGTHS and iopl_ok(vcpu):
        if op[0] in (0xE4, 0xE5, 0xEC, 0xED):                   # in: all ones, of the operand size
            rax = vcpu.uc.reg_read(X.UC_X86_REG_RAX)
            if op[0] in (0xE4, 0xEC):
                rax |= 0xFF
            elif 0x66 in code[:plen]:
                rax |= 0xFFFF
            else:
                rax = 0xFFFFFFFF                                # a 32-bit write clears bits 32-63
            vcpu.uc.reg_write(X.UC_X86_REG_RAX, rax)
        length = plen + IN_OUT_LENGTHS[op[0]]
        vcpu.domain.trace_privop(vcpu, rip, code[:length])
        vcpu.set_rip(rip + length)
        return
    vcpu.inject_exception(TRAP_gp_fault, 0, rip)
    vcpu.after_exception()


# -- cpuid, rdtsc ----------------------------------------------------------------------------------------
def cpuid_instruction(vcpu: "Vcpu") -> None:
    """A native cpuid (hooked at the instruction): from guest user mode with CPUID faulting on, #GP(0)."""
    if vcpu.cpuid_faulting and not vcpu.kernel_mode:
        vcpu.inject_exception(TRAP_gp_fault, 0, vcpu.rip)
        vcpu.after_exception()
        return
    emulate_cpuid(vcpu)


def _instructions_between(vcpu: "Vcpu", start: int, end: int) -> int:
    """How many instructions lie in [start, end) of the current code (rdtsc's position in its block)."""
    if end <= start:
        return 0
    code = vcpu.aspace.read(start, end - start) if end - start <= 4096 else b""
    return sum(1 for _ in _md.disasm_lite(code, start))


def emulate_rdtsc(vcpu: "Vcpu", rdtscp: bool) -> None:
    clock = vcpu.domain.clock
    try:
        now = clock.now_at(vcpu.rip, lambda a, b: _instructions_between(vcpu, a, b))
    except GuestFault:
        now = clock.now_ns()
    tsc = vcpu.domain.tsc_of(now)
    uc = vcpu.uc
    uc.reg_write(X.UC_X86_REG_RAX, tsc & 0xFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_RDX, tsc >> 32)
    if rdtscp:
        uc.reg_write(X.UC_X86_REG_RCX, vcpu.tsc_aux)
