"""`--log-hypercalls`: one line per hypercall, with the caller symbolized, on stderr."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional, TextIO

from unicorn import x86_const as X

from miniguest.abi import errno

if TYPE_CHECKING:
    from miniguest.hypervisor.host import Vcpu


def call_site(vcpu: "Vcpu") -> Optional[int]:
    """The return address of a `call hypercall_page+32*N` (above the two registers the stub pushed)."""
    rsp = vcpu.uc.reg_read(X.UC_X86_REG_RSP)
    page = vcpu.domain.image.notes.hypercall_page if vcpu.domain.image else None
    rip = vcpu.rip
    if page is None or not page <= rip < page + 4096:
        return rip
    t = vcpu.aspace.walk(rsp + 16)
    return vcpu.domain.mem.read_u64(t[0]) if t and (rsp + 16) % 8 == 0 else None


def format_result(result: Optional[int]) -> str:
    if result is None:
        return "(no return)"
    signed = result - (1 << 64) if result >= 1 << 63 else result
    if -4096 < signed < 0:
        return f"-{errno.name(-signed)}"
    return f"{signed:#x}" if signed > 9 else str(signed)


class HypercallLog:
    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self._pending: dict[int, tuple[str, str]] = {}

    def before(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...]) -> None:
        table = vcpu.domain.hypercalls
        hc = table.get(nr)
        name = table.name_of(nr)
        sub = hc.subop_name(args) if hc else None
        nargs = hc.nargs if hc and hc.handler else 5
        shown = [f"{a:#x}" for a in args[:nargs]]
        if sub is not None and hc is not None and hc.subop_arg is not None:
            shown[hc.subop_arg] = sub
        site = call_site(vcpu)
        where = vcpu.domain.symbols.describe(site) if site is not None and vcpu.domain.symbols else "?"
        self._pending[vcpu.id] = (f"{name}({', '.join(shown)})", where)

    def after(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...], result: Optional[int]) -> None:
        call, where = self._pending.pop(vcpu.id, (vcpu.domain.hypercalls.name_of(nr), "?"))
        now = vcpu.domain.clock.now_ns()
        self.stream.write(f"[{now:>12} ns] d{vcpu.domain.domid}v{vcpu.id} {call} = {format_result(result)}"
                          f"  from {where}\n")
        self.stream.flush()
