"""Xen's checks on a PV vCPU context: what arch_set_info_guest (xen/arch/x86/domain.c) refuses, and what a
running 64-bit PV vCPU's CPU state can be.

`check_guest_context(ctx)` is arch_set_info_guest's validation of a `vcpu_guest_context` for a 64-bit PV
domain, in Xen's order and with Xen's errnos (0 when accepted); like Xen it also applies its fix-ups to the
context (a selector's RPL raised to the guest kernel's 3, EFLAGS.VM dropped). VCPUOP_initialise will pass
the guest's context through it; a snapshot restore (Vcpu.restore) builds the context from the saved PV state
and refuses any errno -- and, since a file is not a guest asking politely, also any context Xen would have
had to fix up.

`check_cpu_state(regs, ...)` is the stricter rule for the registers of a vCPU that has been running: the
state the CPU holds while a PV guest runs under Xen. The guest kernel and user both run at CPL 3, so CS and
SS carry RPL 3 and name either Xen's flat ring-3 descriptors or the guest's own (validated) GDT entries --
never Xen's ring-0 selectors (0xe008/0xe010); data selectors are null or the same; RFLAGS has IF set, IOPL 0
(Xen virtualises IOPL: PHYSDEVOP_set_iopl), no VM/VIF/VIP and no reserved bit; CR0/CR4/EFER are Xen's;
the FS/GS bases are canonical. A snapshot restore runs it before the CPU re-enters the guest.

`check_live(vcpu)` runs both on a live vCPU (fuzzers and tests use it as an invariant).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from miniguest.abi import errno
from miniguest.abi.arch_x86 import (FIRST_RESERVED_GDT_ENTRY, FIRST_RESERVED_GDT_PAGE, FLAT_RING3_CS32,
                                    FLAT_RING3_CS64, FLAT_RING3_DS32, FLAT_RING3_SS64, HYPERVISOR_VIRT_END,
                                    canonical)
from miniguest.abi.xen import VMASST_VALID_PV64
from miniguest.hypervisor import vcpu_regs
from miniguest.hypervisor.x86.cpu import CR0_GUEST, CR4_DE, CR4_REAL, EFER_GUEST

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

# vcpu_guest_context.flags (public/arch-x86/xen.h)
VGCF_i387_valid = 1 << 0
VGCF_in_kernel = 1 << 2
VGCF_failsafe_disables_events = 1 << 3
VGCF_syscall_disables_events = 1 << 4
VGCF_online = 1 << 5

# EFLAGS (Xen's X86_EFLAGS_*)
EFLAGS_CF, EFLAGS_MBS, EFLAGS_PF, EFLAGS_AF, EFLAGS_ZF, EFLAGS_SF = 1, 2, 1 << 2, 1 << 4, 1 << 6, 1 << 7
EFLAGS_TF, EFLAGS_IF, EFLAGS_DF, EFLAGS_OF = 1 << 8, 1 << 9, 1 << 10, 1 << 11
EFLAGS_IOPL, EFLAGS_NT, EFLAGS_RF, EFLAGS_VM = 3 << 12, 1 << 14, 1 << 16, 1 << 17
EFLAGS_AC, EFLAGS_VIF, EFLAGS_VIP, EFLAGS_ID = 1 << 18, 1 << 19, 1 << 20, 1 << 21
EFLAGS_ALL = (EFLAGS_CF | EFLAGS_PF | EFLAGS_AF | EFLAGS_ZF | EFLAGS_SF | EFLAGS_OF | EFLAGS_TF | EFLAGS_IF
              | EFLAGS_DF | EFLAGS_IOPL | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM | EFLAGS_AC | EFLAGS_VIF
              | EFLAGS_VIP | EFLAGS_ID)
# What guest code at CPL 3 (IOPL 0) can have in RFLAGS, besides IF which Xen keeps set.
EFLAGS_GUEST = (EFLAGS_CF | EFLAGS_PF | EFLAGS_AF | EFLAGS_ZF | EFLAGS_SF | EFLAGS_OF | EFLAGS_TF | EFLAGS_DF
                | EFLAGS_NT | EFLAGS_RF | EFLAGS_AC | EFLAGS_ID)

GUEST_KERNEL_RPL = 3                 # a 64-bit PV guest kernel runs in ring 3
MAX_LDT_ENTS = 8192
NR_GDT_FRAMES = FIRST_RESERVED_GDT_PAGE   # Xen's ARRAY_SIZE(v->arch.pv.gdt_frames)
# Xen's flat ring-3 selectors a PV guest may hold in CS (64-bit and compat code) and SS/DS..GS.
XEN_RING3_CODE = frozenset({FLAT_RING3_CS64, FLAT_RING3_CS32})
XEN_RING3_DATA = frozenset({FLAT_RING3_SS64, FLAT_RING3_DS32})


def addr_ok(addr: int) -> bool:
    """Xen's __addr_ok: below 2^47, or above Xen's reserved range."""
    return addr < (1 << 47) or addr >= HYPERVISOR_VIRT_END


def fixup_guest_selector(sel: int) -> int:
    """Xen's __fixup_guest_selector for a 64-bit PV domain: an RPL below 3 becomes 3."""
    return sel if (sel & 3) >= GUEST_KERNEL_RPL else (sel & ~3) | GUEST_KERNEL_RPL


@dataclass
class GuestContext:
    """The fields of a 64-bit PV vcpu_guest_context that arch_set_info_guest reads (the general registers
    besides rip/rsp/rflags and the selectors are taken as they are and not listed)."""
    flags: int = VGCF_in_kernel
    rip: int = 0
    rsp: int = 0
    rflags: int = EFLAGS_MBS | EFLAGS_IF
    cs: int = FLAT_RING3_CS64
    ss: int = FLAT_RING3_SS64
    ds: int = 0
    es: int = 0
    fs: int = 0
    gs: int = 0
    trap_ctxt: list[tuple[int, int, int, int]] = field(default_factory=list)   # (vector, flags, cs, address)
    ldt_base: int = 0
    ldt_ents: int = 0
    gdt_frames: list[int] = field(default_factory=list)
    gdt_ents: int = 0
    kernel_ss: int = FLAT_RING3_SS64
    kernel_sp: int = 0
    ctrlreg: list[int] = field(default_factory=lambda: [0] * 8)    # [1]: user L4, [3]: kernel L4 (pfn << 12)
    debugreg: list[int] = field(default_factory=lambda: [0] * 8)
    event_callback_eip: int = 0
    failsafe_callback_eip: int = 0
    syscall_callback_eip: int = 0
    vm_assist: int = 0
    fs_base: int = 0
    gs_base_kernel: int = 0
    gs_base_user: int = 0


def _refuse(why: Optional[list[str]], err: int, reason: str) -> int:
    if why is not None:
        why.append(reason)
    return -err


def check_guest_context(ctx: GuestContext, vcpu_id: int = 0, initialised: bool = False,
                        why: Optional[list[str]] = None) -> int:
    """arch_set_info_guest's checks for a 64-bit PV domain: 0, or Xen's negative errno (the reason is
    appended to `why`). Applies Xen's fix-ups to `ctx` in place, as Xen does to its copy. What needs the
    domain's frames (the GDT frames' type, the CR3 frames' ownership and type) is for the caller."""
    dr = ctx.debugreg
    if len(dr) != 8 or any(not 0 <= v < 1 << 64 for v in dr):
        return _refuse(why, errno.EINVAL, "debugreg must be 8 64-bit values")
    if dr[6] >> 32 or dr[7] >> 32:
        return _refuse(why, errno.EINVAL, "debugreg[6]/[7] have upper bits set")
    for i in range(4):
        if not addr_ok(dr[i]):
            return _refuse(why, errno.EINVAL, f"debugreg[{i}] {dr[i]:#x} is not an address a guest may name")
    for name in ("rip", "rsp", "kernel_sp", "fs_base", "gs_base_kernel", "gs_base_user", "event_callback_eip",
                 "syscall_callback_eip", "failsafe_callback_eip"):
        value = getattr(ctx, name)
        if not 0 <= value < 1 << 64 or not canonical(value):
            return _refuse(why, errno.EINVAL, f"{name} {value:#x} is not canonical")
    if ctx.ldt_ents and not canonical(ctx.ldt_base):
        return _refuse(why, errno.EINVAL, f"ldt_base {ctx.ldt_base:#x} is not canonical")
    ctx.ss = fixup_guest_selector(ctx.ss)
    ctx.kernel_ss = fixup_guest_selector(ctx.kernel_ss)
    ctx.cs = fixup_guest_selector(ctx.cs)
    fixed = []
    for vector, flags, cs, address in ctx.trap_ctxt:
        if not 0 <= address < 1 << 64 or not canonical(address):
            return _refuse(why, errno.EINVAL, f"trap_ctxt[{vector}].address {address:#x} is not canonical")
        fixed.append((vector, flags, fixup_guest_selector(cs), address))
    ctx.trap_ctxt = fixed
    if not addr_ok(ctx.ldt_base):
        return _refuse(why, errno.EINVAL, f"ldt_base {ctx.ldt_base:#x} lies in Xen's range")
    ctx.rflags &= ~EFLAGS_VM
    if ctx.ldt_base & 0xFFF or ctx.ldt_ents > MAX_LDT_ENTS:
        return _refuse(why, errno.EINVAL, "ldt_base not page aligned or ldt_ents above 8192")
    if vcpu_id == 0 and ctx.vm_assist & ~_vm_assist_mask():
        return _refuse(why, errno.EINVAL, f"vm_assist {ctx.vm_assist:#x} enables unknown assists")
    if (ctx.gdt_ents + 511) // 512 > NR_GDT_FRAMES:
        return _refuse(why, errno.EINVAL, f"gdt_ents {ctx.gdt_ents} needs more than {NR_GDT_FRAMES} frames")
    if not initialised and not ctx.flags & VGCF_in_kernel and not ctx.ctrlreg[1]:
        return _refuse(why, errno.EINVAL, "user mode without a user page table")
    # set_debugreg for each (after the reset values): DR7.GD is privileged; an enabled I/O breakpoint needs
    # CR4.DE (ctrlreg[4], set before the debug registers).
    if dr[7] & (1 << 13):
        return _refuse(why, errno.EPERM, "debugreg[7] sets GD")
    if dr[7] & 0xFF and not ctx.ctrlreg[4] & CR4_DE:
        for i in range(4):
            if (dr[7] >> (16 + 4 * i)) & 3 == 2:
                return _refuse(why, errno.EPERM, f"debugreg[7] makes breakpoint {i} an I/O one without CR4.DE")
    # pv_set_gdt
    if ctx.gdt_ents > FIRST_RESERVED_GDT_ENTRY or len(ctx.gdt_frames) < (ctx.gdt_ents + 511) // 512:
        return _refuse(why, errno.EINVAL, "gdt_ents beyond the guest's part of the GDT or its frames")
    return 0


def _vm_assist_mask() -> int:
    mask = 0
    for bit in VMASST_VALID_PV64:
        mask |= 1 << bit
    return mask


def selector_problem(name: str, sel: int, gdt_ents: int, code: bool) -> Optional[str]:
    """What is wrong with a selector a CPL-3 PV vCPU holds (None: fine). Null is allowed for data
    selectors only; others need RPL 3 and must name Xen's flat ring-3 descriptors or the guest's own GDT
    entries (the LDT is not offered to guests here)."""
    if sel >> 16:
        return f"{name} {sel:#x} is not a selector"
    if not code and name != "ss" and sel >> 2 == 0:
        return None                                    # a null data selector
    if sel & 3 != 3:
        return f"{name} {sel:#06x} has RPL {sel & 3}: a PV guest runs at CPL 3"
    if sel & 4:
        return f"{name} {sel:#06x} names the LDT"
    index = sel >> 3
    if index >= FIRST_RESERVED_GDT_ENTRY:
        allowed = XEN_RING3_CODE if code else XEN_RING3_DATA
        if sel not in allowed:
            return f"{name} {sel:#06x} names a Xen descriptor a guest cannot hold"
        return None
    if not 0 < index < gdt_ents:
        return f"{name} {sel:#06x} is outside the guest's GDT ({gdt_ents} entries)"
    return None


CPU_REGS = ("rip", "rsp", "rflags", "cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr4", "efer", "fs_base",
            "gs_base", "kernel_gs_base")


def check_cpu_state(regs: dict, gdt_ents: int, cr0_ts: bool) -> Optional[str]:
    """What is wrong with the CPU registers of a started 64-bit PV vCPU (None: what Xen could have left).
    `regs` has the names of vcpu_regs.save."""
    for name in CPU_REGS:
        if not isinstance(regs.get(name), int):
            return f"{name} is missing"
    for name, code in (("cs", True), ("ss", False), ("ds", False), ("es", False), ("fs", False), ("gs", False)):
        problem = selector_problem(name, regs[name], gdt_ents, code)
        if problem:
            return problem
    rf = regs["rflags"]
    if rf & ~(EFLAGS_GUEST | EFLAGS_IF | EFLAGS_MBS) or not rf & EFLAGS_MBS:
        return f"rflags {rf:#x} holds reserved, VM, VIF/VIP or IOPL bits (Xen keeps IOPL 0: it is virtual)"
    if not rf & EFLAGS_IF:
        return f"rflags {rf:#x} has IF clear: Xen keeps interrupts enabled in a PV guest"
    if regs["cr0"] != CR0_GUEST | (8 if cr0_ts else 0):
        return f"cr0 {regs['cr0']:#x} is not Xen's ({CR0_GUEST | (8 if cr0_ts else 0):#x})"
    if regs["cr4"] != CR4_REAL:
        return f"cr4 {regs['cr4']:#x} is not Xen's ({CR4_REAL:#x})"
    if regs["efer"] != EFER_GUEST:
        return f"efer {regs['efer']:#x} is not Xen's ({EFER_GUEST:#x})"
    for name in ("rip", "rsp", "fs_base", "gs_base", "kernel_gs_base"):
        if not canonical(regs[name]):
            return f"{name} {regs[name]:#x} is not canonical"
    return None


def context_of(vcpu: "Vcpu", regs: dict, vm_assist: int) -> GuestContext:
    """The vcpu_guest_context (64-bit PV) that describes a vCPU's state: its saved registers `regs` (the
    names of vcpu_regs.save) and its PV fields, as XEN_DOMCTL_getvcpucontext would fill it in."""
    return GuestContext(
        flags=(VGCF_in_kernel if vcpu.kernel_mode else 0)
        | (VGCF_failsafe_disables_events if vcpu.failsafe_mask_events else 0)
        | (VGCF_syscall_disables_events if vcpu.syscall_mask_events else 0),
        rip=regs["rip"], rsp=regs["rsp"], rflags=regs["rflags"], cs=regs["cs"], ss=regs["ss"], ds=regs["ds"],
        es=regs["es"], fs=regs["fs"], gs=regs["gs"],
        trap_ctxt=[(i, e.flags, e.cs, e.address) for i, e in enumerate(vcpu.trap_table)
                   if e.flags or e.cs or e.address],
        ldt_base=vcpu.ldt[0], ldt_ents=vcpu.ldt[1], gdt_frames=list(vcpu.gdt_frames), gdt_ents=vcpu.gdt_ents,
        kernel_ss=vcpu.kernel_ss, kernel_sp=vcpu.kernel_sp,
        ctrlreg=[0, vcpu.guest_table_user << 12, 0, vcpu.guest_table << 12, vcpu.cr4_ctl, 0, 0, 0],
        debugreg=list(vcpu.debugreg), event_callback_eip=vcpu.event_callback,
        failsafe_callback_eip=vcpu.failsafe_callback, syscall_callback_eip=vcpu.syscall_callback,
        vm_assist=vm_assist, fs_base=vcpu.fs_base, gs_base_kernel=vcpu.gs_base_kernel,
        gs_base_user=vcpu.gs_base_user)


def check_pv_state(vcpu: "Vcpu", regs: dict, vm_assist: int) -> Optional[str]:
    """All of the above for a vCPU whose PV fields are set and whose CPU registers are `regs`: Xen's
    arch_set_info_guest refusals, the fix-ups it would need (a running vCPU never does), the CPU state, and
    the PV fields arch_set_info_guest does not see (nmi callback, compat callbacks, IOPL, user GS selector)."""
    if not vcpu.started:
        # Not entered yet: the CPU still points at Xen's entry stub at CPL 0 and the guest's entry frame is on
        # Xen's stack (which the caller must know to be Xen's); describe the vCPU by that frame's selectors.
        regs = dict(regs, cs=FLAT_RING3_CS64, ss=FLAT_RING3_SS64, ds=0, es=0, fs=0, gs=0, rip=0, rsp=0,
                    rflags=EFLAGS_MBS | EFLAGS_IF)
    ctx = context_of(vcpu, regs, vm_assist)
    before = GuestContext(**{k: (list(v) if isinstance(v, list) else v) for k, v in vars(ctx).items()})
    why: list[str] = []
    err = check_guest_context(ctx, vcpu.id, initialised=False, why=why)
    if err:
        return f"Xen's arch_set_info_guest refuses it ({errno.name(err)}): {why[0]}"
    for name in ("cs", "ss", "kernel_ss"):
        if getattr(ctx, name) != getattr(before, name):
            return f"{name} {getattr(before, name):#06x} has RPL {getattr(before, name) & 3}: a PV guest runs at CPL 3"
    for (vector, _, cs, _), (_, _, cs_before, _) in zip(ctx.trap_ctxt, before.trap_ctxt):
        if cs != cs_before:
            return f"trap_table[{vector}].cs {cs_before:#06x} has RPL {cs_before & 3}"
    problem = selector_problem("kernel_ss", vcpu.kernel_ss, vcpu.gdt_ents, code=False)
    if problem:
        return problem
    for name in ("nmi_callback",):
        if not canonical(getattr(vcpu, name)):
            return f"{name} {getattr(vcpu, name):#x} is not canonical"
    for ctype, (address, _) in vcpu.compat_callbacks.items():
        if not canonical(address):
            return f"compat callback {ctype} address {address:#x} is not canonical"
    if not 0 <= vcpu.iopl <= 3:
        return f"iopl {vcpu.iopl} is not 0-3 (PHYSDEVOP_set_iopl)"
    if vcpu.gs_sel_user and selector_problem("gs_sel_user", vcpu.gs_sel_user, vcpu.gdt_ents, code=False):
        return selector_problem("gs_sel_user", vcpu.gs_sel_user, vcpu.gdt_ents, code=False)
    if vcpu.started:
        return check_cpu_state(regs, vcpu.gdt_ents, vcpu.cr0_ts)
    return None


def check_live(vcpu: "Vcpu") -> Optional[str]:
    """check_pv_state on a live vCPU (its registers read from the CPU): an invariant for fuzzers and tests."""
    return check_pv_state(vcpu, vcpu_regs.save(vcpu), vcpu.domain.vm_assist)
