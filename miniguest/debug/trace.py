"""Trace records: every hypercall, exception, event, timer, ring message and shutdown of a domain, in order.

A `Tracer` attaches to a domain at the places where things happen -- the hypercall dispatch table
(`Domain.hypercall_observers`), the event channel layer (`EventChannels.on_raise`) and the domain's emit()
calls (exceptions, upcalls, timers, console bytes, privileged-op emulation, idle jumps, shutdown, crash) --
and turns each into a `TraceRecord` with a sequence number and the virtual time. Records hold only plain
data (ints, strings, lists, dicts), so a trace of a deterministic run is byte-identical across runs and
machines once serialized (see to_json).

Record kinds and their fields:
  hypercall  vcpu, nr, name, subop (or null), args [ints], result (int or null), caller (int or null)
  exception  vcpu, vector, error_code, rip, cr2, software
  upcall     vcpu
  event      port, what ("raise" on the guest side, "send" to dom0)
  timer      vcpu, kind ("singleshot" | "periodic")
  console    source ("hypervisor" | "ring"), data (str, latin-1)
  privop     vcpu, rip, insn (hex bytes)
  idle       until (ns)
  shutdown   reason          crash  why          log  message
Other layers may emit further kinds (e.g. "xenstore"); consumers must ignore kinds they do not know.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from miniguest.debug.hclog import call_site
from miniguest.hypervisor.hypercalls import TABLE, name_of

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.vcpu import Vcpu

TRACE_FORMAT_VERSION = 1
ALL_KINDS = frozenset({"hypercall", "exception", "upcall", "event", "timer", "console", "privop", "idle",
                       "shutdown", "crash", "log"})


@dataclass
class TraceRecord:
    seq: int
    time: int                    # virtual nanoseconds since boot
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "time": self.time, "kind": self.kind, **self.data},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "TraceRecord":
        d = json.loads(line)
        return cls(d.pop("seq"), d.pop("time"), d.pop("kind"), d)


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Tracer:
    """Collects records from one domain. `kinds` limits what is kept (None: everything)."""

    def __init__(self, domain: "Domain", kinds: Optional[Iterable[str]] = None,
                 sink: Optional[Callable[[TraceRecord], None]] = None, keep: bool = True) -> None:
        self.domain = domain
        self.kinds = frozenset(kinds) if kinds is not None else None
        self.records: list[TraceRecord] = []
        self.sinks: list[Callable[[TraceRecord], None]] = [sink] if sink else []
        self.keep = keep
        self._seq = 0
        self._calls: dict[int, list[Any]] = {}
        self.attached = False

    # -- attaching ----------------------------------------------------------------------------------------
    def attach(self) -> "Tracer":
        if not self.attached:
            self.domain.hypercall_observers.append(self)
            self.domain.trace_sinks.append(self._on_emit)
            self.domain.events.on_raise.append(self._on_event)
            self.attached = True
        return self

    def detach(self) -> None:
        if self.attached:
            self.domain.hypercall_observers.remove(self)
            self.domain.trace_sinks.remove(self._on_emit)
            self.domain.events.on_raise.remove(self._on_event)
            self.attached = False

    # -- recording ----------------------------------------------------------------------------------------
    def wants(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    def record(self, kind: str, **data: Any) -> Optional[TraceRecord]:
        if not self.wants(kind):
            return None
        self._seq += 1
        rec = TraceRecord(self._seq, self.domain.clock.now_ns() if self.domain.vcpus else 0, kind,
                          {k: _plain(v) for k, v in data.items()})
        if self.keep:
            self.records.append(rec)
        for sink in self.sinks:
            sink(rec)
        return rec

    def _on_emit(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "privop" and "insn" in fields:
            fields = dict(fields, insn=bytes(fields["insn"]).hex())
        self.record(kind, **fields)

    def _on_event(self, port: int, what: str) -> None:
        self.record("event", port=port, what=what)

    # Hypercall observer protocol (hypercalls.dispatch).
    def before(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...]) -> None:
        if not self.wants("hypercall"):
            return
        self._calls.setdefault(vcpu.id, []).append((nr, args, call_site(vcpu)))

    def after(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...], result: Optional[int]) -> None:
        if not self.wants("hypercall"):
            return
        stack = self._calls.get(vcpu.id)
        _, _, caller = stack.pop() if stack else (nr, args, None)
        hc = TABLE.get(nr)
        nargs = hc.nargs if hc else 5
        signed = None if result is None else (result - (1 << 64) if result >= 1 << 63 else result)
        self.record("hypercall", vcpu=vcpu.id, nr=nr, name=name_of(nr),
                    subop=hc.subop_name(args) if hc else None, args=list(args[:nargs]), result=signed,
                    caller=caller)


def write_jsonl(records: Iterable[TraceRecord], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"format": "miniguest-trace", "version": TRACE_FORMAT_VERSION}) + "\n")
        for rec in records:
            f.write(rec.to_json() + "\n")


def read_jsonl(path: str) -> list[TraceRecord]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        if not line.strip():
            continue
        d = json.loads(line)
        if "format" in d:
            continue
        out.append(TraceRecord(d.pop("seq"), d.pop("time"), d.pop("kind"), d))
    return out
