"""Privileged operations of a PV guest at CPL3, emulated as Xen does (xen/arch/x86/pv/emul-priv-op.c).

A 64-bit PV kernel runs in ring 3, so privileged instructions fault with #GP(0). For the few that PV
kernels are allowed to use, Xen decodes and emulates them: rdmsr/wrmsr of the segment-base MSRs (and a few
read-only ones), `mov` from/to control registers, clts, wbinvd. Everything else gets the #GP. cpuid and
rdtsc do not fault on Unicorn; they are hooked and answered from Xen's view (a fixed, host-independent CPUID
policy, the virtual TSC). `in`/`out` are not trapped by Unicorn at all: blocks that contain them are found
when the clock first counts them and get a hook on exactly that instruction, which raises the #GP an
unprivileged domain gets from Xen.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_OP_MEM, X86_REG_FS, X86_REG_GS, X86_REG_RBP, X86_REG_RSP
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from miniguest.abi.arch_x86 import (FLAT_USER_SS64, MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE,
                                    MSR_TSC_AUX, TI_MASK_EVENTS, TRAP_gp_fault, TRAP_invalid_op,
                                    TRAP_stack_error)
from miniguest.abi.callback import CALLBACKTYPE_sysenter
from miniguest.abi.xen import VMASST_TYPE_architectural_iopl
from miniguest.hypervisor.ram import GuestFault, canonical
from miniguest.hypervisor.vcpu import CR0_GUEST, CR4_GUEST, EFER_GUEST, GuestCrash

CR4_DE = 1 << 3

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

MSR_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_MISC_ENABLE = 0x1A0
MSR_PAT = 0x277
XEN_MSR_PAT = 0x050100070406        # Xen's PAT (WB, WT, UC-, UC, WC, WP, ...)
MISC_ENABLE_VALUE = (1 << 0) | (1 << 11) | (1 << 12)   # fast strings, BTS/PEBS unavailable
# CPUID faulting, which Xen offers a PV guest when the CPU has it (our Intel model does): enumerated in
# PLATFORM_INFO, switched in MISC_FEATURES_ENABLES; while on, cpuid from guest user mode takes #GP(0).
MSR_INTEL_PLATFORM_INFO = 0xCE
PLATFORM_INFO_CPUID_FAULTING = 1 << 31
MSR_INTEL_MISC_FEATURES_ENABLES = 0x140
MISC_FEATURES_CPUID_FAULTING = 1 << 0
FORCED_EMULATION = b"\x0f\x0bxen"
CPUID = b"\x0f\xa2"
XEN_CPUID_BASE = 0x40000000
XEN_CPUID_MAX_LEAF = 5
PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF2, 0xF3))
GPR_BY_NUMBER = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX, X.UC_X86_REG_RSP,
                 X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_R8, X.UC_X86_REG_R9,
                 X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
                 X.UC_X86_REG_R15)
_md = Cs(CS_ARCH_X86, CS_MODE_64)
IO_MNEMONICS = frozenset(("in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"))


# -- decoding ---------------------------------------------------------------------------------------------
def _fetch(vcpu: "Vcpu", rip: int, n: int = 16) -> bytes:
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
        length = _emulate_privileged(vcpu, rip) if vcpu.kernel_mode else 0
        if not length:
            length = _emulate_cli_sti(vcpu, rip)
        if length:
            vcpu.domain.trace_privop(vcpu, rip, _fetch(vcpu, rip, length))
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
    insn = next(_md_detail.disasm(_fetch(vcpu, rip), rip), None)
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


def _emulate_privileged(vcpu: "Vcpu", rip: int) -> int:
    """Emulate the instruction at rip; returns its length, or 0 if Xen would not emulate it."""
    code = _fetch(vcpu, rip)
    plen, rex, op = _decode(code)
    if len(op) < 2 or op[0] != 0x0F:
        return 0
    uc = vcpu.uc
    if op[1] == 0x32:                                  # rdmsr
        value = read_msr(vcpu, uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF)
        if value is None:
            return 0
        uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
        uc.reg_write(X.UC_X86_REG_RDX, value >> 32)
        return plen + 2
    if op[1] == 0x30:                                  # wrmsr
        msr = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        value = (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF)
        return plen + 2 if write_msr(vcpu, msr, value) else 0
    if op[1] in (0x20, 0x21, 0x22, 0x23) and len(op) >= 3:   # mov from/to a control or debug register
        modrm = op[2]
        if modrm >> 6 != 3:
            return 0
        number = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
        gpr = GPR_BY_NUMBER[(modrm & 7) | (8 if rex & 1 else 0)]
        debug = op[1] in (0x21, 0x23)
        if op[1] in (0x20, 0x21):
            value = (read_dr if debug else read_cr)(vcpu, number)
            if value is None:
                return 0
            uc.reg_write(gpr, value)
            return plen + 3
        return plen + 3 if (write_dr if debug else write_cr)(vcpu, number, uc.reg_read(gpr)) else 0
    if op[1] == 0x06:                                  # clts
        uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) & ~8)
        vcpu.cr0_ts = False
        return plen + 2
    if op[1] in (0x08, 0x09):                          # invd / wbinvd: no cache control for a domU
        return plen + 2
    return 0


def read_msr(vcpu: "Vcpu", msr: int) -> Optional[int]:
    uc = vcpu.uc
    if msr == MSR_FS_BASE:
        return uc.msr_read(MSR_FS_BASE)
    if msr == MSR_GS_BASE:
        return uc.msr_read(MSR_GS_BASE)
    if msr == MSR_SHADOW_GS_BASE:
        return vcpu.gs_base_user
    if msr == MSR_EFER:
        return EFER_GUEST
    if msr == MSR_TSC:
        return vcpu.domain.tsc_of(vcpu.domain.clock.now_ns())
    if msr == MSR_PAT:
        return XEN_MSR_PAT
    if msr == MSR_MISC_ENABLE:
        return MISC_ENABLE_VALUE
    if msr == MSR_APIC_BASE:
        return 0xFEE00000 | (1 << 8)      # BSP, xAPIC disabled for PV
    if msr == MSR_TSC_AUX:
        return vcpu.id
    if msr == MSR_INTEL_PLATFORM_INFO:
        return PLATFORM_INFO_CPUID_FAULTING
    if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
        return MISC_FEATURES_CPUID_FAULTING if vcpu.cpuid_faulting else 0
    return None


def write_msr(vcpu: "Vcpu", msr: int, value: int) -> bool:
    uc = vcpu.uc
    if msr in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
        if not canonical(value):
            return False
        if msr == MSR_FS_BASE:
            uc.msr_write(MSR_FS_BASE, value)
        elif msr == MSR_GS_BASE:
            uc.msr_write(MSR_GS_BASE, value)
            vcpu.gs_base_kernel = value
        else:
            vcpu.gs_base_user = value
        return True
    if msr == MSR_EFER:
        return value == EFER_GUEST         # Xen lets a PV guest "write" only the value it sees
    if msr in (MSR_PAT, MSR_MISC_ENABLE):
        return value == read_msr(vcpu, msr)
    if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
        if value & ~MISC_FEATURES_CPUID_FAULTING:
            return False                   # reserved bits: #GP
        vcpu.cpuid_faulting = bool(value)
        return True
    return False


def read_cr(vcpu: "Vcpu", cr: int) -> Optional[int]:
    if cr == 0:
        return CR0_GUEST | (8 if vcpu.cr0_ts else 0)
    if cr == 2:
        view, off = vcpu._vi()
        return struct.unpack_from("<Q", view, off + 0x10)[0]
    if cr == 3:
        return (vcpu.guest_table if vcpu.kernel_mode else vcpu.guest_table_user) << 12
    if cr == 4:
        return CR4_GUEST | getattr(vcpu, "cr4_ctl", 0)
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
        from miniguest.hypervisor.x86.mm import switch_base
        from miniguest.hypervisor.x86.page_types import PageTypeError
        try:
            switch_base(vcpu, value >> 12, user=False)
        except PageTypeError:
            return False
        return True
    if cr == 4:
        # Xen's pv_fixup_guest_cr4: a PV guest's %cr4 write never faults. The guest controls only
        # TSD|DE|FSGSBASE|OSXSAVE, each if its CPUID policy has the feature; anything else is discarded
        # and reads back as Xen's own visible bits (CR4_GUEST). Of those, this CPU model gives the guest
        # DE; FSGSBASE is not in our policy, TSD and OSXSAVE (xsetbv emulation) are not modelled and read
        # back clear.
        vcpu.cr4_ctl = value & CR4_DE
        return True
    return False


# Debug registers, as Xen's set_debugreg()/pv read_dr for a PV guest: DR0-3 take any address a guest may
# name (below 2^47 or above Xen's range), DR6/DR7 keep their fixed bits, DR4/5 alias DR6/7 while CR4.DE is
# clear. The values are the guest's view only: breakpoints are not armed in the CPU model, so a DR7 that
# enables one is refused (#GP) rather than accepted and silently ignored.
DR6_DEFAULT = 0xFFFF0FF0
DR7_DEFAULT = 0x400
HYPERVISOR_VIRT_END = 0xFFFF880000000000


def _debugregs(vcpu: "Vcpu") -> list:
    regs = getattr(vcpu, "debugreg", None)
    if regs is None:
        regs = vcpu.debugreg = [0, 0, 0, 0, 0, 0, DR6_DEFAULT, DR7_DEFAULT]
    return regs


def _dr_alias(vcpu: "Vcpu", dr: int) -> Optional[int]:
    if dr in (4, 5):
        return None if getattr(vcpu, "cr4_ctl", 0) & CR4_DE else dr + 2
    return dr if dr < 8 else None


def read_dr(vcpu: "Vcpu", dr: int) -> Optional[int]:
    dr = _dr_alias(vcpu, dr)
    return None if dr is None else _debugregs(vcpu)[dr]


def write_dr(vcpu: "Vcpu", dr: int, value: int) -> bool:
    dr = _dr_alias(vcpu, dr)
    if dr is None:
        return False
    regs = _debugregs(vcpu)
    if dr < 4:
        if not (value < (1 << 47) or value >= HYPERVISOR_VIRT_END):
            return False
        regs[dr] = value
    elif dr == 6:
        regs[6] = (value & 0x0000E00F) | DR6_DEFAULT      # B0-3, BD, BS, BT; the rest reads as 1s/0s
    elif dr == 7:
        if value & 0xFF or value >> 32:                   # L0-3/G0-3 would arm a breakpoint: not modelled
            return False
        regs[7] = (value & 0xFFFF2700) | DR7_DEFAULT
    else:
        return False
    return True


# -- instructions that reach us by other hooks ------------------------------------------------------------
def software_interrupt(vcpu: "Vcpu", vector: int, rip_after: int) -> None:
    """`int N`, `int3`: deliver vector N if the trap table allows it from this mode, else #GP((N<<3)|2)."""
    ti = vcpu.trap_table[vector]
    dpl = ti.flags & 3
    needed = 1 if vcpu.kernel_mode else 3
    if vector in (3, 4) or dpl >= needed:
        vcpu.domain.trace_exception(vcpu, vector, None, rip_after, None, software=True)
        if not ti.address:
            raise GuestCrash(f"software interrupt {vector} with no handler in the trap table")
        from miniguest.abi.arch_x86 import TI_MASK_EVENTS
        vcpu.bounce(ti.address, None, bool(ti.flags & TI_MASK_EVENTS), rip_after)
        return
    vcpu.inject_exception(TRAP_gp_fault, (vector << 3) | 2, rip_after - 2)


def invalid_opcode(vcpu: "Vcpu") -> None:
    """#UD, including Xen's forced-emulation prefix `ud2a; .ascii "xen"` which must be followed by cpuid."""
    rip = vcpu.rip
    code = _fetch(vcpu, rip, 7)
    if code[:5] == FORCED_EMULATION:
        if code[5:7] == CPUID and vcpu.cpuid_faulting and not vcpu.kernel_mode:
            # Xen's emulate_forced_invocation: #GP(0) in place of the #UD, at the cpuid itself.
            vcpu.inject_exception(TRAP_gp_fault, 0, rip + 5)
            vcpu.after_exception()
            return
        if code[5:7] == CPUID:
            emulate_cpuid(vcpu)
            vcpu.set_rip(rip + 7)
            vcpu.after_exception()
            return
    vcpu.inject_exception(TRAP_invalid_op, None, rip)
    vcpu.after_exception()


def sysenter_instruction(vcpu: "Vcpu") -> None:
    """SYSENTER from a 64-bit PV guest (an Intel CPU: AMD has none in long mode). Xen's sysenter_entry
    records a frame with rip 0, a null cs with RPL 3, rsp 0 and FLAT_USER_SS (the guest's registers stay
    as the SYSEXIT convention leaves them), then bounces to the sysenter callback, or to the #GP handler
    with error code 0 when none is registered. From guest kernel mode the frame would be built at that
    %rsp 0: Xen crashes the domain."""
    if vcpu.kernel_mode:
        raise GuestCrash("sysenter in guest kernel mode (Xen would build the bounce frame at %rsp 0)")
    frame = (0, 3, 0, FLAT_USER_SS64)
    address, mask = vcpu.compat_callbacks.get(CALLBACKTYPE_sysenter, (0, False))
    if address:
        vcpu.bounce(address, None, mask, frame=frame)
    else:
        ti = vcpu.trap_table[TRAP_gp_fault]
        vcpu.domain.trace_exception(vcpu, TRAP_gp_fault, 0, 0, None)
        if not ti.address:
            raise GuestCrash("sysenter with no sysenter callback and no #GP handler")
        vcpu.bounce(ti.address, 0, bool(ti.flags & TI_MASK_EVENTS), frame=frame)
    vcpu.deliver_events()


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
    code = _fetch(vcpu, rip)
    plen, _, op = _decode(code)
    if op[:1] in (b"\xfa", b"\xfb") and iopl_ok(vcpu):
        return plen + 1
    return 0


IN_OUT_LENGTHS = {0xE4: 2, 0xE5: 2, 0xE6: 2, 0xE7: 2, 0xEC: 1, 0xED: 1, 0xEE: 1, 0xEF: 1}


def io_instruction(vcpu: "Vcpu", rip: int) -> None:
    """An I/O instruction about to run: without the IOPL for it, #GP(0) at the instruction as Xen gives an
    unprivileged domain; with it, the access completes against no device."""
    code = _fetch(vcpu, rip)
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


# -- cpuid ------------------------------------------------------------------------------------------------
_native_policy: Optional[dict[tuple[int, int], tuple[int, int, int, int]]] = None
SUBLEAF_LEAVES = frozenset((4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18))


def _native_cpuid_policy() -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """CPUID of Unicorn's emulated CPU (identical on every host), masked the way Xen masks a PV guest's
    view, computed once per process."""
    global _native_policy
    if _native_policy is not None:
        return _native_policy
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, b"\x0f\xa2\xf4")
    policy: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    def raw(leaf: int, sub: int) -> tuple[int, int, int, int]:
        uc.reg_write(X.UC_X86_REG_RAX, leaf)
        uc.reg_write(X.UC_X86_REG_RCX, sub)
        uc.emu_start(0, 2)
        return tuple(uc.reg_read(r) & 0xFFFFFFFF for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX,
                                                            X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))  # type: ignore

    for base in (0, 0x80000000):
        top = raw(base, 0)[0]
        top = min(top, base + 0x20)
        for leaf in range(base, top + 1):
            for sub in (range(0, 4) if leaf in SUBLEAF_LEAVES else (0,)):
                policy[(leaf, sub)] = raw(leaf, sub)
    a, b, c, d = policy.get((1, 0), (0, 0, 0, 0))
    c &= ~((1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 21) | (1 << 24))  # MONITOR VMX SMX EIST TM2 x2APIC TSC-deadline
    c |= 1 << 31                                                                           # hypervisor
    d &= ~((1 << 12) | (1 << 22) | (1 << 29) | (1 << 31))                                  # MTRR ACPI TM PBE
    b &= 0x0000FFFF                                                                        # APIC id 0
    policy[(1, 0)] = (a, b, c, d)
    if (7, 0) in policy:
        # FSGSBASE hidden: Unicorn's wr{fs,gs}base skips the non-canonical #GP Xen's guests rely on.
        a, b, c, d = policy[(7, 0)]
        policy[(7, 0)] = (a, b & ~1, c, d)
    _native_policy = policy
    return policy


def xen_leaf(vcpu: "Vcpu", leaf: int, sub: int) -> tuple[int, int, int, int]:
    from miniguest.hypervisor.common.kernel import XEN_MAJOR, XEN_MINOR
    idx = leaf - XEN_CPUID_BASE
    if idx == 0:
        return (XEN_CPUID_BASE + XEN_CPUID_MAX_LEAF, 0x566E6558, 0x65584D4D, 0x4D4D566E)  # "XenVMMXenVMM"
    if idx == 1:
        return ((XEN_MAJOR << 16) | XEN_MINOR, 0, 0, 0)
    if idx == 2:
        return (1, 0x40000000, 0, 0)            # one hypercall page; MSR to place it (HVM only)
    if idx == 3:
        if sub == 0:
            return (0, 0, 1_000_000, 0)         # TSC mode native, 1 GHz guest TSC (kHz)
        if sub == 2:
            return (1_000_000, 0, 0, 0)
        return (0, 0, 0, 0)
    return (0, 0, 0, 0)


def cpuid_instruction(vcpu: "Vcpu") -> None:
    """A native cpuid (hooked at the instruction): from guest user mode with CPUID faulting on, #GP(0)."""
    if vcpu.cpuid_faulting and not vcpu.kernel_mode:
        vcpu.inject_exception(TRAP_gp_fault, 0, vcpu.rip)
        vcpu.after_exception()
        return
    emulate_cpuid(vcpu)


def emulate_cpuid(vcpu: "Vcpu") -> None:
    uc = vcpu.uc
    leaf = uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
    sub = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
    if XEN_CPUID_BASE <= leaf <= XEN_CPUID_BASE + XEN_CPUID_MAX_LEAF:
        regs = xen_leaf(vcpu, leaf, sub)
    else:
        policy = _native_cpuid_policy()
        key = (leaf, sub if leaf in SUBLEAF_LEAVES else 0)
        regs = policy.get(key, (0, 0, 0, 0))
        if leaf == 1:
            a, b, c, d = regs
            regs = (a, b | (vcpu.id << 24), c, d)
    for r, v in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX), regs):
        uc.reg_write(r, v)


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
        uc.reg_write(X.UC_X86_REG_RCX, vcpu.id)
