"""Readable trace lines: `miniguest boot --trace KINDS` on stderr, and gdb's `monitor trace on`.

Built on debug/tracer.py's Tracer and TraceRecord (unchanged): this module only turns records into text.
Addresses are symbolized (`function+0x12`) and, when the formatter is live (attached to a running domain),
the instruction at each exception and hypercall call site is disassembled with capstone, read through the
guest's page tables at the moment the record is made:

  [      31337 ns] hypercall  console_io(write, 0x11, 0x40b000) = 0
                   from arch_init+0x1c: call 0x401240 <hypercall_page+0x240>
  [      42000 ns] exception  #PF page fault, error 0x2, cr2 0x0
                   at do_thing+0x8: mov qword ptr [rax], 1
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Iterable, Optional, TextIO

from miniguest.abi.arch_x86 import ERROR_CODE_VECTORS
from miniguest.hypervisor.debugger import disassemble, read_code
from miniguest.debug.hclog import format_result
from miniguest.toolstack.symbols import EMPTY, Symbols
from miniguest.debug.tracer import ALL_KINDS, TraceRecord, Tracer
from miniguest.hypervisor.host import HYPERCALLS

if TYPE_CHECKING:
    from miniguest.hypervisor.host import Domain

# Names users type (plural as in the issue, singular as trace.py) -> record kinds.
KIND_ALIASES: dict[str, frozenset[str]] = {
    "all": ALL_KINDS,
    "hypercalls": frozenset({"hypercall"}),
    "exceptions": frozenset({"exception"}),
    "events": frozenset({"event", "upcall"}),
    "upcalls": frozenset({"upcall"}),
    "timers": frozenset({"timer"}),
    "privops": frozenset({"privop", "ptwr"}),
    "console": frozenset({"console"}),
}
KIND_ALIASES.update({k: frozenset({k}) for k in ALL_KINDS})

VECTOR_NAMES = {0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP int3", 4: "#OF overflow",
                5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
                8: "#DF double fault", 9: "coprocessor segment overrun", 10: "#TS invalid TSS",
                11: "#NP segment not present", 12: "#SS stack fault", 13: "#GP general protection",
                14: "#PF page fault", 16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
                19: "#XM SIMD error", 20: "#VE virtualization", 21: "#CP control protection"}
_INDENT = " " * 19
_CALL_LENGTHS = (5, 6, 2, 3, 7, 4)       # call rel32, call [rip+d], call reg, call r64 / [reg+d8], ...


class TraceKindsError(ValueError):
    pass


def parse_kinds(text: str) -> frozenset[str]:
    """`exceptions,hypercalls,events` or `all` -> record kinds. Unknown names -> TraceKindsError."""
    kinds: set[str] = set()
    for word in (w.strip().lower() for w in text.split(",")):
        if not word:
            continue
        if word not in KIND_ALIASES:
            raise TraceKindsError(f"unknown trace kind {word!r} (known: {', '.join(sorted(KIND_ALIASES))})")
        kinds |= KIND_ALIASES[word]
    if not kinds:
        raise TraceKindsError("no trace kinds given")
    return frozenset(kinds)


class TraceFormatter:
    """Formats records of one domain. `live`: the domain is at the point the record describes, so code at
    the addresses named may be read and disassembled."""

    def __init__(self, domain: Optional["Domain"] = None, live: bool = True) -> None:
        self.domain = domain
        self.live = live and domain is not None
        self.symbols: Symbols = (domain.symbols if domain is not None and domain.symbols else EMPTY)

    # -- pieces -------------------------------------------------------------------------------------------
    def where(self, addr: Optional[int]) -> str:
        if addr is None:
            return "?"
        hit = self.symbols.lookup(addr)
        if hit is None:
            return f"{addr:#x}"
        name, off = hit
        return f"{name}+{off:#x}" if off else name

    def _aspace(self, vcpu_id: int):
        if not self.live or self.domain is None or not self.domain.vcpus:
            return None
        vcpus = self.domain.vcpus
        return vcpus[vcpu_id].aspace if 0 <= vcpu_id < len(vcpus) else vcpus[0].aspace

    def insn_at(self, vcpu_id: int, addr: Optional[int]) -> Optional[str]:
        aspace = self._aspace(vcpu_id)
        if aspace is None or addr is None:
            return None
        code = read_code(aspace, addr)
        insns = disassemble(code, addr) if code else []
        return self._text(insns[0]) if insns else None

    def call_before(self, vcpu_id: int, ret: Optional[int]) -> Optional[str]:
        """The call instruction that returns to `ret` (decoded backwards by trying the usual lengths)."""
        aspace = self._aspace(vcpu_id)
        if aspace is None or ret is None:
            return None
        for n in _CALL_LENGTHS:
            code = read_code(aspace, ret - n, n)
            if len(code) != n:
                continue
            insns = disassemble(code, ret - n)
            if insns and insns[0][1] == "call" and insns[0][0] + len(insns[0][3]) == ret:
                return self._text(insns[0])
        return None

    def _text(self, insn: tuple[int, str, str, bytes]) -> str:
        _, mnem, ops, _ = insn
        text = f"{mnem} {ops}".strip()
        if mnem in ("call", "jmp") or mnem.startswith("j"):
            try:
                target = int(ops, 16)
            except ValueError:
                return text
            return f"{text} <{self.where(target)}>"
        return text

    # -- records ------------------------------------------------------------------------------------------
    def format(self, rec: TraceRecord) -> str:
        d = rec.data
        head = f"[{rec.time:>11} ns] {rec.kind:<10} "
        fn = getattr(self, f"_fmt_{rec.kind}", None)
        body = fn(d) if fn else " ".join(f"{k}={v}" for k, v in sorted(d.items()))
        return head + body

    def _fmt_hypercall(self, d: dict[str, Any]) -> str:
        nr, args = d.get("nr"), list(d.get("args") or [])
        shown = [f"{a:#x}" if isinstance(a, int) else str(a) for a in args]
        hc = HYPERCALLS.get(nr) if isinstance(nr, int) else None
        if d.get("subop") is not None and hc is not None and hc.subop_arg is not None \
                and hc.subop_arg < len(shown):
            shown[hc.subop_arg] = str(d["subop"])
        result = d.get("result")
        text = f"{d.get('name')}({', '.join(shown)}) = {format_result(result)}"
        caller = d.get("caller")
        if caller is not None:
            text += f"\n{_INDENT}from {self.where(caller)}"
            call = self.call_before(d.get("vcpu", 0), caller)
            if call:
                text += f": {call}"
        return text

    def _fmt_exception(self, d: dict[str, Any]) -> str:
        vector = d.get("vector")
        name = VECTOR_NAMES.get(vector, f"vector {vector}")
        software = bool(d.get("software"))
        text = f"{name} ({vector})" if not software else f"int {vector:#x} ({name})"
        if d.get("error_code") is not None and vector in ERROR_CODE_VECTORS:
            text += f", error {d['error_code']:#x}"
        if d.get("cr2") is not None and vector == 14:
            text += f", cr2 {d['cr2']:#x}"
        vid = d.get("vcpu", 0)
        rip = d.get("rip")
        if rip is None and self.live and self.domain is not None:
            vcpus = self.domain.vcpus
            rip = vcpus[vid].rip if 0 <= vid < len(vcpus) else None
        site = self.int_before(vid, rip) if software else None
        if site is not None:
            # A software interrupt reports the address after the `int`: show the `int` itself.
            return text + f"\n{_INDENT}at {self.where(site[0])}: {site[1]}"
        text += f"\n{_INDENT}at {self.where(rip)}"
        insn = self.insn_at(vid, rip)
        return text + (f": {insn}" if insn else "")

    def int_before(self, vcpu_id: int, ret: Optional[int]) -> Optional[tuple[int, str]]:
        """The int3 / int N / into / int1 that ends at `ret`."""
        aspace = self._aspace(vcpu_id)
        if aspace is None or ret is None:
            return None
        for n in (1, 2):
            code = read_code(aspace, ret - n, n)
            insns = disassemble(code, ret - n) if len(code) == n else []
            if insns and insns[0][1] in ("int3", "int", "into", "int1") and len(insns[0][3]) == n:
                return ret - n, self._text(insns[0])
        return None

    def _fmt_upcall(self, d: dict[str, Any]) -> str:
        text = f"vcpu{d.get('vcpu', 0)} event upcall"
        if self.live and self.domain is not None and self.domain.vcpus:
            vid = d.get("vcpu", 0)
            vcpu = self.domain.vcpus[vid if 0 <= vid < len(self.domain.vcpus) else 0]
            # Inside a hypercall, RIP is still on the `syscall` (Unicorn adds its length after the hook).
            rip = vcpu.rip + (2 if vcpu.in_syscall_hook else 0)
            text += f" to {self.where(vcpu.event_callback)}, interrupting {self.where(rip)}"
        return text

    def _fmt_event(self, d: dict[str, Any]) -> str:
        what = d.get("what")
        return f"port {d.get('port')} {'raised' if what == 'raise' else 'sent to dom0' if what == 'send' else what}"

    def _fmt_timer(self, d: dict[str, Any]) -> str:
        return f"vcpu{d.get('vcpu', 0)} {d.get('kind')} timer fired"

    def _fmt_console(self, d: dict[str, Any]) -> str:
        return f"{d.get('source')}: {d.get('data', '')!r}"

    def _fmt_privop(self, d: dict[str, Any]) -> str:
        rip = d.get("rip")
        text = f"emulated at {self.where(rip)}"
        insn = self.insn_at(d.get("vcpu", 0), rip)
        return text + (f": {insn}" if insn else f" ({d.get('insn')})")

    def _fmt_ptwr(self, d: dict[str, Any]) -> str:
        rip = d.get("rip")
        insn = self.insn_at(d.get("vcpu", 0), rip)
        return f"page-table store emulated at {self.where(rip)}" + (f": {insn}" if insn else f" ({d.get('insn')})")

    def _fmt_idle(self, d: dict[str, Any]) -> str:
        return f"all vCPUs blocked: time jumps to {d.get('until')} ns"

    def _fmt_shutdown(self, d: dict[str, Any]) -> str:
        return f"{d.get('reason')}"

    def _fmt_crash(self, d: dict[str, Any]) -> str:
        return f"{d.get('why')}"

    def _fmt_log(self, d: dict[str, Any]) -> str:
        return f"{d.get('message')}"


def attach_printer(domain: "Domain", kinds: Iterable[str], stream: TextIO = sys.stderr) -> Tracer:
    """Print records of `kinds` to `stream` as they happen (the `--trace` option). Returns the Tracer."""
    fmt = TraceFormatter(domain)

    def sink(rec: TraceRecord) -> None:
        try:
            stream.write(fmt.format(rec) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass                    # a closed stderr must not stop the guest
    return Tracer(domain, kinds=kinds, sink=sink, keep=False).attach()
