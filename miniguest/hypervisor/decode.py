"""What hypercall records show of a call: its arguments decoded into the structs the guest passed, and the
values Xen handed back -- the small framework the hypercall families' decoders are written in.

A trace that says `event_channel_op(send) {port: 2}` or `bind_virq {virq: TIMER} -> {port: 3}` is something a
reviewer can read and a golden file can pin down; `args: [4, 18446744071562095876]` is neither. Each family
declares its decoders beside its handlers, in its sub-op table (hypercall.SubOp.decode_in / decode_out).
An input decoder runs before the handler (it sees what the guest asked, not what the handler overwrote), an
output decoder after it (the port bind_virq returned, the extents populate_physmap filled in). Both read
guest memory through the vCPU's own page tables like the handler does, and never write it.

Guest memory is hostile: a decoder that meets an unmapped pointer records `{"fault": address}` instead of
failing, and any other error in a decoder is recorded as `{"decode_error": ...}` -- tracing must never
change what the guest sees. Lists are cut at MAX_ITEMS entries (with `"<key>_more": n`) so a guest cannot
make a trace explode. Every value is plain data (ints, strings, lists, dicts): records stay deterministic.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Callable, Optional

from miniguest.abi.xen import DOMID_SELF, VIRQ_NAMES
from miniguest.hypervisor.ram import GuestFault

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

MAX_ITEMS = 32
Decoded = dict[str, Any]
InputDecoder = Callable[["DecodeCtx"], Optional[Decoded]]
OutputDecoder = Callable[["DecodeCtx", Decoded], Optional[Decoded]]
RESERVED_DOMIDS = {DOMID_SELF: "DOMID_SELF", 0x7FF1: "DOMID_IO", 0x7FF2: "DOMID_XEN", 0x7FF3: "DOMID_COW",
                   0x7FF4: "DOMID_INVALID"}


class DecodeCtx:
    """What a decoder sees: the vCPU, the raw arguments, the result (outputs only) and guest-memory readers."""

    def __init__(self, vcpu: "Vcpu", args: tuple[int, ...], result: Optional[int] = None) -> None:
        self.vcpu = vcpu
        self.args = args
        self.result = result

    def read(self, va: int, size: int) -> bytes:
        return self.vcpu.mem.read(va, size)

    def unpack(self, fmt: str, va: int) -> tuple:
        return struct.unpack(fmt, self.read(va, struct.calcsize(fmt)))

    def u16(self, va: int) -> int:
        return self.unpack("<H", va)[0]

    def u32(self, va: int) -> int:
        return self.unpack("<I", va)[0]

    def u64(self, va: int) -> int:
        return self.unpack("<Q", va)[0]

    def cstr(self, va: int, size: int) -> str:
        return self.read(va, size).split(b"\0", 1)[0].decode("latin-1")

    def symbol(self, addr: int) -> Optional[str]:
        """`name+0x1c` for a guest kernel address (handlers, call sites), None if unknown."""
        return self.vcpu.domain.symbolize(addr)

    def now(self) -> int:
        return self.vcpu.domain.clock.now_ns()

    def array(self, va: int, count: int, fmt: str) -> tuple[list, int]:
        """The first MAX_ITEMS of `count` structs at va, and count."""
        n = min(count, MAX_ITEMS)
        size = struct.calcsize(fmt)
        return [self.unpack(fmt, va + i * size) for i in range(n)], count


def guarded(fn: Callable[[], Optional[Decoded]]) -> Optional[Decoded]:
    """Run a decoder: a fault or a decoder bug becomes part of the record, never the guest's problem."""
    try:
        return fn()
    except GuestFault as f:
        return {"fault": f.va}
    except Exception as e:          # a decoder bug must never reach the guest
        return {"decode_error": f"{type(e).__name__}: {e}"}


def put_list(out: Decoded, key: str, values: list, total: int) -> Decoded:
    """out[key] = values, plus out[key + "_more"] = how many were cut (MAX_ITEMS)."""
    out[key] = values
    if total > len(values):
        out[key + "_more"] = total - len(values)
    return out


def domid(value: int) -> Any:
    """A domain id as records show it: the reserved ones by name."""
    return RESERVED_DOMIDS.get(value, value)


def virq_name(virq: int) -> Any:
    name = VIRQ_NAMES.get(virq)
    return name[len("VIRQ_"):] if name else virq
