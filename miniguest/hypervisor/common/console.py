"""console_io: the hypervisor console (Xen's serial console / `xl dmesg`), as a debug build of Xen offers
it to a domU: writes show up as the domain's hypervisor-console output, reads take bytes typed at it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from miniguest.abi.xen import CONSOLEIO_read, CONSOLEIO_write, HYPERVISOR_console_io
from miniguest.hypervisor.decode import DecodeCtx, Decoded
from miniguest.hypervisor.hypercall import Hypercall, SubOp, SubOps

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

CHUNK = 4096


def console_write(vcpu: "Vcpu", count: int, buffer: int) -> int:
    # Like Xen: output chunk by chunk, so a fault part-way leaves what was already written.
    while count:
        n = min(count, CHUNK - (buffer & (CHUNK - 1)))
        data = vcpu.mem.read(buffer, n)
        vcpu.domain.hv_console_write(data)
        buffer += n
        count -= n
    return 0


def console_read(vcpu: "Vcpu", count: int, buffer: int) -> int:
    data = vcpu.domain.hv_console_read(count)
    if data:
        vcpu.mem.write(buffer, data)
    return len(data)


def console_io(vcpu: "Vcpu", cmd: int, count: int, buffer: int) -> Optional[int]:
    return SUBOPS.run(cmd, vcpu, count & 0xFFFFFFFF, buffer)       # `unsigned int count` in Xen


def _write_in(ctx: DecodeCtx) -> Decoded:
    return {"count": ctx.args[1] & 0xFFFFFFFF}


def _read_out(ctx: DecodeCtx, ins: Decoded) -> Optional[Decoded]:
    n = ctx.result or 0
    return {"data": ctx.read(ctx.args[2], n).decode("latin-1")} if n else None


SUBOPS = SubOps((SubOp(CONSOLEIO_write, "write", console_write, decode_in=_write_in),
                 SubOp(CONSOLEIO_read, "read", console_read, decode_out=_read_out)))
HYPERCALLS = (Hypercall(HYPERVISOR_console_io, "console_io", console_io, 3, subop_arg=0, subops=SUBOPS),)

