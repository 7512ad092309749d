"""Trace records: every hypercall, exception, event, timer, ring message and shutdown of a domain, in order.

A `Tracer` is an Interceptor (hypervisor/intercept.py): attached to a domain it hears every hypercall
(before/after), every notification (on_event) and everything else the domain emits (on_trace: exceptions,
upcalls, timers, console bytes, privileged-op emulation, idle jumps, shutdown, crash), plus xenstored's ring
messages for the domain (a MessageHook) -- and turns each into a `TraceRecord` with a sequence number and the virtual time. Records hold only plain
data (ints, strings, lists, dicts), so a trace of a deterministic run is byte-identical across runs and
machines once serialized (see to_json).

Record kinds and their fields:
  hypercall  vcpu, nr, name, subop (or null), args [ints], result (int or null), caller (int or null);
             errno (name, when result is a negative errno), site ("function+0x1c" of the caller),
             in / out (decoded argument structs and results, from the family's sub-op table; absent when
             there is nothing to decode), blocked (true when the call left the vCPU blocked)
  exception  vcpu, vector, error_code, rip, cr2, software; site (symbolized rip)
  upcall     vcpu; pending (ports pending and unmasked at delivery)
  event      port, what ("raise" on the guest side, "send" to dom0); to (what the port is bound to), vcpu
  timer      vcpu, timer ("singleshot" | "periodic")
  console    source ("hypervisor" | "ring"), data (str, latin-1)
  xenstore   dir ("request" | "reply" | "event"), domid, type (e.g. "READ"), req_id, tx_id, args [str]
  inject     target ("hypercall" | "event" | "xenstore"), rule, and what was injected (miniguest.regress)
  privop     vcpu, rip, insn (hex bytes)
  ptwr       vcpu, rip, insn (hex bytes): a store to one of the guest's L1 tables, emulated
  idle       until (ns)
  shutdown   reason          crash  why          log  message
Other layers may emit further kinds; consumers must ignore kinds and fields they do not know.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from miniguest.abi.errno import name as errno_name
from miniguest.abi.xs_wire import XS_NAMES
from miniguest.backends.xenstore import XenstoreDaemon
from miniguest.debug.hclog import call_site
from miniguest.hypervisor.intercept import RingEndpoint
from miniguest.toolstack.libxl import Guest

if TYPE_CHECKING:
    from miniguest.hypervisor.host import Domain, Vcpu

TRACE_FORMAT_VERSION = 1
ALL_KINDS = frozenset({"hypercall", "exception", "upcall", "event", "timer", "console", "privop", "ptwr", "idle",
                       "shutdown", "crash", "log", "xenstore", "inject"})


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
    """Collects records from one domain. `kinds` limits what is kept (None: everything); `decode` adds the
    decoded argument structs and results of hypercalls (`in`/`out`)."""

    def __init__(self, domain: "Domain", kinds: Optional[Iterable[str]] = None,
                 sink: Optional[Callable[[TraceRecord], None]] = None, keep: bool = True,
                 decode: bool = True) -> None:
        self.domain = domain
        self.decode = decode
        self.kinds = frozenset(kinds) if kinds is not None else None
        self.records: list[TraceRecord] = []
        self.sinks: list[Callable[[TraceRecord], None]] = [sink] if sink else []
        self.keep = keep
        self._seq = 0
        self._calls: dict[int, list[Any]] = {}
        self.attached = False

    # -- attaching ----------------------------------------------------------------------------------------
    def _xenstored(self) -> Optional[XenstoreDaemon]:
        return self.domain.xenstored if isinstance(self.domain, Guest) else None

    def attach(self) -> "Tracer":
        if not self.attached:
            self.domain.attach(self)
            daemon = self._xenstored()
            if daemon is not None:
                daemon.message_hooks.append(self._on_xenstore)
            self.attached = True
        return self

    def detach(self) -> None:
        if self.attached:
            self.domain.detach(self)
            daemon = self._xenstored()
            if daemon is not None and self._on_xenstore in daemon.message_hooks:
                daemon.message_hooks.remove(self._on_xenstore)
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

    # -- the interception interface (hypervisor/intercept.py) -----------------------------------------------
    def on_trace(self, kind: str, fields: dict[str, Any]) -> None:
        if kind in ("privop", "ptwr") and "insn" in fields:
            fields = dict(fields, insn=bytes(fields["insn"]).hex())
        elif kind == "exception" and self.wants(kind):
            fields = dict(fields, site=self.domain.symbolize(fields.get("rip")))
        elif kind == "upcall" and self.wants(kind):
            fields = dict(fields, pending=self.domain.events.pending_unmasked())
        self.record(kind, **fields)

    def on_event(self, port: int, what: str) -> None:
        if not self.wants("event"):
            return
        p = self.domain.events.ports.get(port)
        self.record("event", port=port, what=what, to=p.describe() if p is not None else "closed",
                    vcpu=p.vcpu if p is not None else 0)

    def _on_xenstore(self, conn: RingEndpoint, direction: str, msg_type: int, req_id: int, tx_id: int,
                     payload: bytes) -> None:
        """xenstored message hook: requests from and replies/watch events to this domain's connection."""
        if conn.domid != self.domain.domid or not self.wants("xenstore"):
            return None
        parts = bytes(payload).split(b"\0")
        if len(parts) > 1 and parts[-1] == b"":
            parts.pop()
        name = XS_NAMES.get(msg_type, str(msg_type))
        self.record("xenstore", dir=direction, domid=conn.domid, type=name[3:] if name.startswith("XS_") else name,
                    req_id=req_id, tx_id=tx_id, args=[p.decode("latin-1") for p in parts])
        return None

    def before(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...]) -> None:
        if not self.wants("hypercall"):
            return
        ins = None
        if self.decode:
            hc = vcpu.domain.hypercalls.get(nr)
            ins = hc.decode_inputs(vcpu, args) if hc is not None else None
        self._calls.setdefault(vcpu.id, []).append((nr, args, call_site(vcpu), ins))

    def after(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...], result: Optional[int]) -> None:
        if not self.wants("hypercall"):
            return
        stack = self._calls.get(vcpu.id)
        _, _, caller, ins = stack.pop() if stack else (nr, args, None, None)
        table = vcpu.domain.hypercalls
        hc = table.get(nr)
        nargs = hc.nargs if hc and hc.handler else 5
        signed = None if result is None else (result - (1 << 64) if result >= 1 << 63 else result)
        subop = hc.subop_name(args) if hc else None
        extra: dict[str, Any] = {"site": self.domain.symbolize(caller)}
        if signed is not None and -4096 < signed < 0:
            extra["errno"] = errno_name(-signed)
        if self.decode:
            if ins:
                extra["in"] = ins
            outs = hc.decode_outputs(vcpu, args, signed, ins) if hc is not None else None
            if outs:
                extra["out"] = outs
        if vcpu.blocked:
            extra["blocked"] = True
        self.record("hypercall", vcpu=vcpu.id, nr=nr, name=table.name_of(nr), subop=subop, args=list(args[:nargs]),
                    result=signed, caller=caller, **extra)


def header_line(meta: Optional[dict[str, Any]] = None) -> str:
    """The first line of a trace file; `meta` (image name and hash, options...) must be deterministic."""
    head: dict[str, Any] = {"format": "miniguest-trace", "version": TRACE_FORMAT_VERSION}
    if not meta:
        return json.dumps(head)
    head["meta"] = meta
    return json.dumps(head, sort_keys=True, separators=(",", ":"))


def write_jsonl(records: Iterable[TraceRecord], path: str, meta: Optional[dict[str, Any]] = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(header_line(meta) + "\n")
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
