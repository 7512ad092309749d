"""multicall: a batch of hypercalls, each result written back into its entry."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from unicorn.x86_const import UC_X86_REG_RAX

from miniguest.abi import errno
from miniguest.abi.xen import HYPERVISOR_iret, HYPERVISOR_multicall
from miniguest.hypervisor.decode import DecodeCtx, Decoded, put_list
from miniguest.hypervisor.hypercall import Hypercall, dispatch

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

_ENTRY = struct.Struct("<QQ6Q")


def multicall(vcpu: "Vcpu", call_list: int, nr_calls: int) -> Optional[int]:
    if vcpu.in_multicall:
        return -errno.EINVAL            # Xen refuses multicall re-entry
    nr_calls &= 0xFFFFFFFF
    vcpu.in_multicall = True
    try:
        for i in range(nr_calls):
            entry = call_list + i * 64
            op, _, *args = _ENTRY.unpack(vcpu.mem.read(entry, 64))
            if op == HYPERVISOR_iret:
                # Xen since XSA-213: the iret is performed and ends the batch (whatever follows would run in
                # the context the iret switched to); the multicall's result is the iret's, the restored rax.
                dispatch(vcpu, op, *args[:5])
                result = vcpu.uc.reg_read(UC_X86_REG_RAX)
                vcpu.mem.write(entry + 8, struct.pack("<Q", result & (2**64 - 1)))
                return None
            else:
                result = dispatch(vcpu, op, *args[:5])
                if result is None:
                    result = 0
            vcpu.mem.write(entry + 8, struct.pack("<Q", result & (2**64 - 1)))
            if not vcpu.domain.running:
                break
    finally:
        vcpu.in_multicall = False
    return 0


def _multicall_in(ctx: DecodeCtx) -> Decoded:
    nr = ctx.args[1] & 0xFFFFFFFF
    entries, total = ctx.array(ctx.args[0], nr, "<QQ6Q")
    table = ctx.vcpu.domain.hypercalls
    return put_list({"nr_calls": nr}, "ops", [table.name_of(e[0]) if table.get(e[0]) else str(e[0])
                                              for e in entries], total)


def _multicall_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    nr = ctx.args[1] & 0xFFFFFFFF
    entries, total = ctx.array(ctx.args[0], nr, "<QQ6Q")
    results: list = []
    for e in entries:
        r = e[1] - (1 << 64) if e[1] >= 1 << 63 else e[1]
        results.append(f"-{errno.name(-r)}" if -4096 < r < 0 else r)
    return put_list({}, "results", results, total)


HYPERCALLS = (Hypercall(HYPERVISOR_multicall, "multicall", multicall, 2, decode_in=_multicall_in,
                        decode_out=_multicall_out),)
