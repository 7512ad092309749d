"""The CPU half of a vCPU's saved state: Unicorn's registers as named plain integers, and their restore.

Why not `uc.context_save()`: that blob is QEMU's CPUX86State for one Unicorn build (host pointers and
layout included); a snapshot file must be readable by another build, documented and checkable. So the
state is the architectural registers by name: general registers, RIP/RFLAGS, segment selectors and the
FS/GS/kernel-GS bases, CR0/2/3/4 and EFER, the x87 stack, control, status and tag words and the SSE
registers with MXCSR.

Restore cannot just write CS/SS: Unicorn stores a written selector without changing the privilege level,
and a fresh vCPU runs at CPL 0. A restored vCPU therefore re-enters guest mode exactly as start_of_day
does: the registers are written at CPL 0 (data selectors and bases first, so the bases survive), then the
CPU runs Xen's one `iretq` from the per-domain entry stub with an {rip, cs, rflags, rsp, ss} frame on the
hypervisor stack, stopping at the guest's rip. The caller sets the clock afterwards (the iretq counted).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import UcError
from unicorn import x86_const as X

from miniguest.hypervisor.save import StateError
from miniguest.hypervisor.unicorn_x86 import read_exception_state
from miniguest.hypervisor.x86.xen_area import ENTRY_STUB_VA, HV_STACK_VA

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

MSR_EFER = 0xC0000080
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_KERNEL_GS_BASE = 0xC0000102
U64 = (1 << 64) - 1

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
        "r15", "rip", "rflags")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4")
X87 = ("fpcw", "fpsw", "fptag", "fop", "fip", "fdp")
MSRS = {"efer": MSR_EFER, "fs_base": MSR_FS_BASE, "gs_base": MSR_GS_BASE, "kernel_gs_base": MSR_KERNEL_GS_BASE}
_REG = {name: getattr(X, "UC_X86_REG_" + ("EFLAGS" if name == "rflags" else name.upper()))
        for name in GPRS + SEGMENTS + CONTROL + X87 + ("mxcsr",)}
# Bit widths, to validate a snapshot from disk (anything wider is refused).
WIDTH = {**{n: 64 for n in GPRS + CONTROL + ("fip", "fdp") + tuple(MSRS)}, **{n: 16 for n in SEGMENTS},
         "fpcw": 16, "fpsw": 16, "fptag": 16, "fop": 16, "mxcsr": 32}


def save(vcpu: "Vcpu") -> dict[str, Any]:
    """All register state of a stopped vCPU as plain data (ints; fp: [mantissa, exponent]; xmm: ints)."""
    uc = vcpu.uc
    regs: dict[str, Any] = {name: uc.reg_read(reg) for name, reg in _REG.items()}
    for name, msr in MSRS.items():
        regs[name] = uc.msr_read(msr)
    regs["fp"] = [list(uc.reg_read(getattr(X, f"UC_X86_REG_FP{i}"))) for i in range(8)]
    regs["xmm"] = [uc.reg_read(getattr(X, f"UC_X86_REG_XMM{i}")) for i in range(16)]
    return regs


def check(regs: Any, where: str) -> list[str]:
    """Problems with a register dict read from a file (empty list: usable)."""
    if not isinstance(regs, dict):
        return [f"{where}: not an object"]
    problems = []
    for name, bits in WIDTH.items():
        v = regs.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << bits:
            problems.append(f"{where}.{name}: expected an integer below 2**{bits}")
    fp = regs.get("fp")
    if not (isinstance(fp, list) and len(fp) == 8 and all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(x, int) for x in e)
            and 0 <= e[0] <= U64 and 0 <= e[1] < 1 << 16 for e in fp)):
        problems.append(f"{where}.fp: expected 8 [mantissa, exponent] pairs")
    xmm = regs.get("xmm")
    if not (isinstance(xmm, list) and len(xmm) == 16
            and all(isinstance(v, int) and 0 <= v < 1 << 128 for v in xmm)):
        problems.append(f"{where}.xmm: expected 16 integers below 2**128")
    return problems


def restore(vcpu: "Vcpu", regs: dict[str, Any], started: bool) -> None:
    """Load `regs` into a fresh vCPU of a freshly built domain (memory already restored).

    `started`: the snapshot's vCPU had entered the guest. If not, its registers still point at the entry
    stub with the start-of-day frame in (restored) memory, and are simply written back."""
    uc = vcpu.uc
    uc.reg_write(X.UC_X86_REG_CR4, regs["cr4"])
    vcpu.load_cr3(regs["cr3"] >> 12)
    uc.reg_write(X.UC_X86_REG_CR0, regs["cr0"])
    uc.reg_write(X.UC_X86_REG_CR2, regs["cr2"])
    uc.msr_write(MSR_EFER, regs["efer"])
    for i, (mantissa, exponent) in enumerate(regs["fp"]):
        uc.reg_write(getattr(X, f"UC_X86_REG_FP{i}"), (mantissa, exponent))
    for name in X87 + ("mxcsr",):
        uc.reg_write(_REG[name], regs[name])
    for i, value in enumerate(regs["xmm"]):
        uc.reg_write(getattr(X, f"UC_X86_REG_XMM{i}"), value)
    for name in GPRS:
        if name not in ("rip", "rsp", "rflags"):
            uc.reg_write(_REG[name], regs[name])
    if not started:
        for name in ("rip", "rsp", "rflags"):
            uc.reg_write(_REG[name], regs[name])
        return
    # Data selectors at CPL 0 (a non-null FS/GS load resets its base), then the bases.
    for name in ("ds", "es", "fs", "gs"):
        uc.reg_write(_REG[name], regs[name])
    for name in ("fs_base", "gs_base", "kernel_gs_base"):
        uc.msr_write(MSRS[name], regs[name])
    frame = (regs["rip"], regs["cs"], regs["rflags"], regs["rsp"], regs["ss"])
    stack = vcpu.domain.xen.stack_mfn * 4096
    for i, value in enumerate(frame):
        vcpu.domain.mem.write_u64(stack + i * 8, value)
    uc.reg_write(X.UC_X86_REG_RSP, HV_STACK_VA)
    # Run just the stub's iretq now, stopping at the guest's rip before any guest instruction: the run loop
    # may bounce an event upcall onto the guest stack before the first slice, which needs guest registers.
    try:
        uc.emu_start(ENTRY_STUB_VA, regs["rip"])
    except UcError as e:
        raise StateError(f"the vCPU cannot re-enter the guest ({e})") from None
    # Writing the selectors at CPL 0 leaves QEMU's "exception in progress" set: the guest's next fault
    # would become a #DF. Clear it as every exception hook does (unicorn_x86.read_exception_state).
    read_exception_state(uc)
    now = {name: uc.reg_read(_REG[name]) for name in ("rip", "cs", "ss", "rsp")}
    if any(now[name] != regs[name] for name in now):
        raise StateError("the vCPU did not re-enter the guest at the saved rip/cs/ss/rsp")
