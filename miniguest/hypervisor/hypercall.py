"""Hypercalls: how a family declares them, and the dispatch every hypercall passes through.

A hypercall family (one module, named as Xen names its file: common/sched.py, x86/mm.py, pv/iret.py ...)
holds its handlers and declares them in a `HYPERCALLS` tuple of `Hypercall` rows: number, name, handler,
argument count, and for a multiplexed hypercall its sub-op table -- `SubOp` rows giving each sub-op's
number, name, handler and the argument decoders traces and gdb's `monitor hypercalls` use (decode.py).
Compat forms (sched_op_compat, event_channel_op_compat ...) are rows of the same family. Adding a sub-op
touches one file. pv/hypercall.py assembles the families into the table a domain dispatches through
(Xen's pv_hypercall_table); abi/ only has the numbers and layouts.

`HypercallTable.call` is where guest-caused errors become errno values: a bad pointer (GuestFault) is
-EFAULT, an unknown hypercall or sub-op is -ENOSYS (logged once per domain), never a Python exception.
`dispatch` is where the interception interface is called (intercept.py: observers before/after every
call, fault injection before the handler).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Optional

from miniguest.abi import errno
from miniguest.hypervisor.decode import DecodeCtx, Decoded, InputDecoder, OutputDecoder, guarded
from miniguest.hypervisor.ram import GuestFault
from miniguest.hypervisor.x86.page_types import PageTypeError

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

Handler = Callable[..., Optional[int]]


class HypercallError(Exception):
    """Raised by a handler to return -errno (for paths deep inside helpers)."""

    def __init__(self, err: int, why: str = "") -> None:
        super().__init__(why or errno.name(err))
        self.err = err


class UnknownSubop(Exception):
    """A sub-op number no row of the family's table knows: -ENOSYS, logged once."""

    def __init__(self, op: int) -> None:
        super().__init__(op)
        self.op = op


@dataclass(frozen=True)
class SubOp:
    """One row of a sub-op table. `handler` None: Xen has the sub-op, miniguest does not offer it (-ENOSYS).
    The handler's arguments are the family's choice (most get the hypercall's own arguments)."""
    nr: int
    name: str
    handler: Optional[Handler] = None
    decode_in: Optional[InputDecoder] = None
    decode_out: Optional[OutputDecoder] = None
    out_on_error: bool = False          # decode_out also after a failed call (else only for result >= 0)


class SubOps:
    """A family's sub-op table: number -> SubOp (read-only)."""

    def __init__(self, rows: Iterable[SubOp]) -> None:
        by_nr: dict[int, SubOp] = {}
        for row in rows:
            if row.nr in by_nr:
                raise ValueError(f"sub-op {row.nr} ({row.name}) appears twice")
            by_nr[row.nr] = row
        self._by_nr: Mapping[int, SubOp] = MappingProxyType(by_nr)

    def get(self, nr: int) -> Optional[SubOp]:
        return self._by_nr.get(nr)

    def __iter__(self) -> Iterator[SubOp]:
        return iter(self._by_nr.values())

    def names(self) -> dict[int, str]:
        return {nr: row.name for nr, row in self._by_nr.items()}

    def run(self, op: int, *args: object) -> Optional[int]:
        """Call sub-op `op`'s handler: UnknownSubop without a row, -ENOSYS for a row without a handler."""
        row = self._by_nr.get(op)
        if row is None:
            raise UnknownSubop(op)
        if row.handler is None:
            return -errno.ENOSYS
        return row.handler(*args)


NO_SUBOPS = SubOps(())


def not_implemented(op: int) -> Handler:
    """The handler of a sub-op Xen implements and miniguest does not (yet): -ENOSYS, logged once as an
    unknown sub-op, as for a number no row knows."""
    def handler(*args: object) -> Optional[int]:
        raise UnknownSubop(op)
    return handler


@dataclass(frozen=True)
class Hypercall:
    """One row of a family's HYPERCALLS. `handler` None: a hypercall Xen has and miniguest does not offer
    (-ENOSYS). For a multiplexed hypercall `subop_arg` names the argument (0-based) that selects the sub-op
    in `subops`; the others use their own decode_in / decode_out."""
    nr: int
    name: str
    handler: Optional[Handler]
    nargs: int = 0
    subop_arg: Optional[int] = None
    subops: SubOps = NO_SUBOPS
    decode_in: Optional[InputDecoder] = None
    decode_out: Optional[OutputDecoder] = None
    out_on_error: bool = False

    def subop(self, args: tuple[int, ...]) -> Optional[SubOp]:
        return None if self.subop_arg is None else self.subops.get(args[self.subop_arg])

    def subop_name(self, args: tuple[int, ...]) -> Optional[str]:
        """The sub-op as traces name it: its name, or the number when the table has no such row."""
        if self.subop_arg is None:
            return None
        op = args[self.subop_arg]
        row = self.subops.get(op)
        return row.name if row is not None else str(op)

    def _decoders(self, args: tuple[int, ...]) -> tuple[Optional[InputDecoder], Optional[OutputDecoder], bool]:
        if self.subop_arg is None:
            return self.decode_in, self.decode_out, self.out_on_error
        row = self.subops.get(args[self.subop_arg])
        return (row.decode_in, row.decode_out, row.out_on_error) if row is not None else (None, None, False)

    def decode_inputs(self, vcpu: "Vcpu", args: tuple[int, ...]) -> Optional[Decoded]:
        """The decoded arguments (before the handler runs), or None when there is nothing to decode."""
        fn = self._decoders(args)[0]
        if fn is None:
            return None
        return guarded(lambda: fn(DecodeCtx(vcpu, args)))

    def decode_outputs(self, vcpu: "Vcpu", args: tuple[int, ...], result: Optional[int],
                       ins: Optional[Decoded]) -> Optional[Decoded]:
        """What the call handed back (after the handler ran); by default only when it succeeded: Xen gives no
        guarantee about output buffers of a failed call."""
        _, fn, on_error = self._decoders(args)
        if fn is None or (result is not None and result < 0 and not on_error):
            return None
        return guarded(lambda: fn(DecodeCtx(vcpu, args, result), ins or {}))


@dataclass(frozen=True)
class HypercallTable:
    """Number -> Hypercall, assembled from the families' HYPERCALLS (pv/hypercall.py)."""
    rows: Mapping[int, Hypercall] = field(default_factory=dict)

    @classmethod
    def of(cls, *families: Iterable[Hypercall]) -> "HypercallTable":
        rows: dict[int, Hypercall] = {}
        for family in families:
            for hc in family:
                if hc.nr in rows:
                    raise ValueError(f"hypercall {hc.nr} declared by {rows[hc.nr].name} and {hc.name}")
                rows[hc.nr] = hc
        return cls(MappingProxyType(dict(sorted(rows.items()))))

    def get(self, nr: int) -> Optional[Hypercall]:
        return self.rows.get(nr)

    def __iter__(self) -> Iterator[Hypercall]:
        return iter(self.rows.values())

    def by_name(self, name: str) -> Optional[Hypercall]:
        for hc in self.rows.values():
            if hc.name == name:
                return hc
        return None

    def registered_decoders(self) -> list[tuple[str, Optional[str], str]]:
        """(hypercall, sub-op or None, "in" | "out") for every decoder: documentation and tests."""
        out = []
        for hc in self.rows.values():
            rows: list[tuple[Optional[str], object, object]] = [(None, hc.decode_in, hc.decode_out)]
            rows += [(row.name, row.decode_in, row.decode_out) for row in hc.subops]
            for subop, din, dout in rows:
                out += [(hc.name, subop, "in")] if din else []
                out += [(hc.name, subop, "out")] if dout else []
        return sorted(out, key=lambda t: (t[0], t[1] or "", t[2]))

    def name_of(self, nr: int) -> str:
        hc = self.rows.get(nr)
        return hc.name if hc is not None else f"hypercall_{nr}"

    def call(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...]) -> Optional[int]:
        """Run one hypercall (also used by multicall). Returns the value for rax, or None when the handler set
        the guest's registers itself (iret)."""
        domain = vcpu.domain
        hc = self.rows.get(nr)
        if hc is None or hc.handler is None:
            domain.log_once(("hypercall", nr), f"unknown hypercall {nr} ({hc.name if hc else '?'}): -ENOSYS")
            return -errno.ENOSYS
        fi = domain.fault_injector
        if fi is not None:
            injected = fi.hypercall_fault(vcpu, hc, args)
            if injected is not None:
                return injected
        try:
            return hc.handler(vcpu, *args[:hc.nargs])
        except GuestFault:
            return -errno.EFAULT
        except (HypercallError, PageTypeError) as e:
            return e.err
        except UnknownSubop as e:
            domain.log_once(("subop", nr, e.op), f"{hc.name}: unknown sub-op {e.op}: -ENOSYS")
            return -errno.ENOSYS


def call(vcpu: "Vcpu", nr: int, args: tuple[int, ...]) -> Optional[int]:
    """Run one hypercall through the vCPU's domain's table, without the observers (multicall's entries,
    tests)."""
    return vcpu.domain.hypercalls.call(vcpu, nr, args)


def dispatch(vcpu: "Vcpu", nr: int, a1: int, a2: int, a3: int, a4: int, a5: int) -> Optional[int]:
    """A hypercall from the guest (the syscall hook, multicall): observers before and after it."""
    args = (a1, a2, a3, a4, a5)
    domain = vcpu.domain
    observers = domain.hypercall_observers
    if observers:
        for obs in observers:
            obs.before(vcpu, nr, args)
        result = domain.hypercalls.call(vcpu, nr, args)
        for obs in observers:
            obs.after(vcpu, nr, args, result)
        return result
    return domain.hypercalls.call(vcpu, nr, args)
