"""The report shown when a domain crashes (Xen's domain_crash with show_execution_state): why, where
(symbolized with the guest kernel's symbols when the toolstack gave them), the instruction, registers, stack."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

from miniguest.hypervisor.disasm import describe_insn

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.vcpu import Vcpu


class GuestCrash(Exception):
    """Raised inside hypervisor code paths when the guest must be crashed (Xen's domain_crash): the vCPU's
    hook turns it into Domain.crash with this report."""


class Symbolizer(Protocol):
    """Names for guest addresses (the toolstack's toolstack.symbols.Symbols, from the kernel's ELF)."""

    def describe(self, addr: int) -> str: ...

    def lookup(self, addr: int) -> Optional[tuple[str, int]]: ...


class NoSymbols:
    """A Symbolizer that knows no names."""

    def describe(self, addr: int) -> str:
        return f"{addr:#x}"

    def lookup(self, addr: int) -> Optional[tuple[str, int]]:
        return None


NO_SYMBOLS = NoSymbols()


def crash_report(domain: "Domain", vcpu: Optional["Vcpu"], why: str) -> str:
    syms = domain.symbols or NO_SYMBOLS
    lines = [f"domain d{domain.domid} ({domain.name}) crashed: {why}"]
    if vcpu is None:
        return "\n".join(lines)
    try:
        regs = vcpu.regs()
        # The guest's CR2 is the one Xen keeps for it in vcpu_info.arch.cr2 (what `mov %cr2` returns to it);
        # Unicorn's own CR2 register also changes with hypervisor-internal accesses.
        cr2 = vcpu.guest_cr2
        cr3 = vcpu.aspace.cr3
    except Exception as e:          # the CPU itself is unreadable: say so rather than fail
        lines.append(f"  (registers unavailable: {e})")
        return "\n".join(lines)
    rip = regs["rip"]
    lines.append(f"  vcpu {vcpu.id} in guest {'kernel' if vcpu.kernel_mode else 'user'} mode")
    lines.append(f"  RIP: {syms.describe(rip)}")
    insn = describe_insn(vcpu.aspace, rip)
    lines.append(f"  instruction: {insn if insn else '(not mapped)'}")
    names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15"]
    for i in range(0, len(names), 4):
        lines.append("  " + "  ".join(f"{n.upper():>3}={regs[n]:016x}" for n in names[i:i + 4]))
    lines.append(f"  RFLAGS={regs['rflags']:016x}  CR2={cr2:016x}  CR3={cr3:016x}  "
                 f"upcall_mask={vcpu.upcall_mask}")
    rsp = regs["rsp"]
    stack = []
    for i in range(8):
        t = vcpu.aspace.walk(rsp + 8 * i)
        if t is None:
            break
        value = domain.mem.read_u64(t[0]) if (rsp + 8 * i) % 8 == 0 else None
        if value is None:
            break
        hit = syms.lookup(value)
        stack.append(f"    [rsp+{8 * i:#04x}] {value:016x}" + (f"  <{hit[0]}+{hit[1]:#x}>" if hit else ""))
    if stack:
        lines.append("  stack:")
        lines.extend(stack)
    return "\n".join(lines)
