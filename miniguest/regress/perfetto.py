"""Export a trace to the Chrome/Perfetto trace-event JSON format (open it in https://ui.perfetto.dev).

Layout: one process for the domain; one track (thread) per vCPU carrying its hypercalls as complete events
("X"), and exceptions, upcalls, event-channel notifications, timers, injections, privileged-op emulation and
the domain's end as instant events ("i"); idle jumps of the virtual clock are complete events too; one
track per dom0 backend (console, xenstore) carries that backend's traffic. Timestamps are virtual time:
the file's microseconds are the guest's virtual microseconds (1 guest instruction = 1 ns).

Hypervisor work takes no virtual time, so most hypercalls are zero-length slices; a call that blocks the
vCPU (sched_op block/poll) lasts until the vCPU runs again (its next upcall, exception or hypercall).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional, Sequence

from miniguest.debug.tracer import TraceRecord

PID = 1
VCPU_TID_BASE = 1
BACKEND_TIDS = {"console": 100, "xenstore": 101}
_RESUME_KINDS = frozenset({"upcall", "exception", "hypercall", "shutdown", "crash"})


def _us(ns: int) -> float:
    return ns / 1000


def _vcpu_tid(rec: TraceRecord) -> int:
    v = rec.data.get("vcpu")
    return VCPU_TID_BASE + (v if isinstance(v, int) else 0)


def _wake_time(records: Sequence[TraceRecord], i: int) -> int:
    """When a vCPU that blocked in records[i] ran again: the next record showing guest activity."""
    start = records[i]
    tid = _vcpu_tid(start)
    for rec in records[i + 1:]:
        if rec.kind in _RESUME_KINDS and _vcpu_tid(rec) == tid:
            return rec.time
    return records[-1].time if records else start.time


def _call_name(d: dict[str, Any]) -> str:
    return d.get("name", "?") + (f"({d['subop']})" if d.get("subop") is not None else "")


def to_events(records: Sequence[TraceRecord], meta: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    name = (meta or {}).get("image") or "guest"
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": PID, "name": "process_name", "args": {"name": f"domain {name}"}},
        {"ph": "M", "pid": PID, "tid": BACKEND_TIDS["console"], "name": "thread_name",
         "args": {"name": "dom0: console backend"}},
        {"ph": "M", "pid": PID, "tid": BACKEND_TIDS["xenstore"], "name": "thread_name",
         "args": {"name": "dom0: xenstored"}},
    ]
    vcpus = sorted({_vcpu_tid(r) for r in records if "vcpu" in r.data} | {VCPU_TID_BASE})
    for tid in vcpus:
        events.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_name",
                       "args": {"name": f"vCPU {tid - VCPU_TID_BASE}"}})
        events.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}})
    for i, rec in enumerate(records):
        ev = _event(records, i, rec)
        if ev is not None:
            events.append(ev)
    return events


def _event(records: Sequence[TraceRecord], i: int, rec: TraceRecord) -> Optional[dict[str, Any]]:
    d = rec.data
    base: dict[str, Any] = {"pid": PID, "ts": _us(rec.time), "cat": rec.kind}
    k = rec.kind
    if k == "hypercall":
        end = _wake_time(records, i) if d.get("blocked") else rec.time
        args = {key: d[key] for key in ("in", "out", "result", "errno", "site") if key in d}
        args["seq"] = rec.seq
        return {**base, "ph": "X", "tid": _vcpu_tid(rec), "name": _call_name(d), "dur": _us(end - rec.time),
                "args": args}
    if k == "idle":
        until = d.get("until", rec.time)
        return {**base, "ph": "X", "tid": VCPU_TID_BASE, "name": "idle (virtual time skipped)",
                "dur": _us(max(0, until - rec.time)), "args": {"until_ns": until}}
    if k == "console":
        return {**base, "ph": "i", "s": "t", "tid": BACKEND_TIDS["console"],
                "name": f"console ({d.get('source')})", "args": {"data": d.get("data", "")}}
    if k == "xenstore":
        args = d.get("args") or []
        label = f"{d.get('dir')} {d.get('type')}" + (f" {args[0]}" if args else "")
        return {**base, "ph": "i", "s": "t", "tid": BACKEND_TIDS["xenstore"], "name": label[:80],
                "args": {"req_id": d.get("req_id"), "tx_id": d.get("tx_id"), "args": args}}
    names = {
        "exception": lambda: f"exception {d.get('vector')}" + (f" at {d['site']}" if d.get("site") else ""),
        "upcall": lambda: "event upcall",
        "event": lambda: f"event {d.get('what')} port {d.get('port')}",
        "timer": lambda: f"timer ({d.get('timer')})",
        "inject": lambda: f"inject {d.get('target')}: {d.get('rule')}",
        "privop": lambda: "privileged instruction emulated",
        "ptwr": lambda: "page-table store emulated",
        "shutdown": lambda: f"shutdown ({d.get('reason')})",
        "crash": lambda: "domain crashed",
        "log": lambda: f"log: {str(d.get('message'))[:60]}",
    }
    label = names.get(k)
    if label is None:
        return None                   # kinds this exporter does not know are left out, as the format says
    scope = "p" if k in ("shutdown", "crash") else "t"
    return {**base, "ph": "i", "s": scope, "tid": _vcpu_tid(rec), "name": label(),
            "args": {**{key: v for key, v in d.items()}, "seq": rec.seq}}


def export(records: Sequence[TraceRecord], meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return {"traceEvents": to_events(records, meta), "displayTimeUnit": "ns",
            "otherData": {"generator": "miniguest", "clock": "virtual (1 guest instruction = 1 ns)",
                          **{k: str(v) for k, v in (meta or {}).items()}}}


def write(records: Sequence[TraceRecord], path: str, meta: Optional[dict[str, Any]] = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(export(records, meta), f, sort_keys=True, separators=(",", ":"))
        f.write("\n")


def validate(doc: Any) -> list[str]:
    """Problems that would stop a trace-event viewer from loading `doc` (empty list: fine). Checks the
    JSON Object Format's rules: an object with a traceEvents array whose events have the fields their
    phase needs, with numeric timestamps and non-negative durations."""
    problems = []
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        return ["not an object with a traceEvents array"]
    for n, ev in enumerate(doc["traceEvents"]):
        if not isinstance(ev, dict) or not isinstance(ev.get("ph"), str) or "name" not in ev:
            problems.append(f"event {n}: needs ph and name")
            continue
        ph = ev["ph"]
        if ph == "M":
            continue
        if not isinstance(ev.get("ts"), (int, float)) or not isinstance(ev.get("pid"), int) \
                or not isinstance(ev.get("tid"), int):
            problems.append(f"event {n}: needs numeric ts, pid and tid")
        if ph == "X" and (not isinstance(ev.get("dur"), (int, float)) or ev["dur"] < 0):
            problems.append(f"event {n}: a complete event needs a duration >= 0")
        if ph == "i" and ev.get("s", "t") not in ("g", "p", "t"):
            problems.append(f"event {n}: bad instant scope {ev.get('s')!r}")
        if ph not in ("X", "i", "B", "E", "C", "M"):
            problems.append(f"event {n}: unexpected phase {ph!r}")
    return problems


def iter_slices(doc: dict[str, Any]) -> Iterable[dict[str, Any]]:
    return (ev for ev in doc.get("traceEvents", []) if ev.get("ph") == "X")
