"""Trace files: load and validate, filter, show one line per record, and find where two traces diverge.

A trace file is JSON lines (miniguest.debug.tracer): a header `{"format": "miniguest-trace", "version": 1,
"meta": {...}}`, then one record per line with sorted keys. A file may come from anywhere, so loading checks
the header and every line and reports the first problem in one line (TraceFileError) instead of a traceback.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from miniguest.debug.tracer import TRACE_FORMAT_VERSION, TraceRecord

from . import jsonsafe

DEFAULT_CONTEXT = 3


class TraceFileError(Exception):
    """A trace file that cannot be read (missing, not a miniguest trace, a bad line)."""


@dataclass
class TraceFile:
    meta: dict[str, Any]
    records: list[TraceRecord]


def parse_lines(lines: Iterable[str], name: str = "<trace>") -> TraceFile:
    meta: Optional[dict[str, Any]] = None
    records: list[TraceRecord] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = jsonsafe.loads(line)
        except ValueError as e:
            raise TraceFileError(f"{name}:{n}: not JSON ({e})") from None
        if not isinstance(d, dict):
            raise TraceFileError(f"{name}:{n}: a record must be a JSON object")
        if meta is None:
            if d.get("format") != "miniguest-trace":
                raise TraceFileError(f"{name}: not a miniguest trace (no header line)")
            if d.get("version") != TRACE_FORMAT_VERSION:
                raise TraceFileError(f"{name}: trace format version {_brief(d.get('version'))} is not "
                                     f"supported (this miniguest reads version {TRACE_FORMAT_VERSION})")
            meta = d.get("meta") or {}
            if not isinstance(meta, dict):
                raise TraceFileError(f"{name}: the header's meta must be a JSON object")
            continue
        seq, time, kind = d.pop("seq", None), d.pop("time", None), d.pop("kind", None)
        if not _is_u64(seq) or not _is_u64(time) or not isinstance(kind, str):
            raise TraceFileError(f"{name}:{n}: a record needs integer seq and time (0 to 2^64-1) and a "
                                 "string kind")
        problem = _check_fields(kind, d)
        if problem:
            raise TraceFileError(f"{name}:{n}: {problem}")
        records.append(TraceRecord(seq, time, kind, d))
    if meta is None:
        raise TraceFileError(f"{name}: empty file, not a miniguest trace")
    return TraceFile(meta, records)


def _is_u64(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64


def _brief(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


#: Fields the tools compute with (not only print) and the types miniguest.debug.tracer writes them with; a
#: file is untrusted, so a record whose field has another type is refused when the file is loaded, and show,
#: diff, export and goldens can rely on them. Everything else is only ever printed or compared (normalised
#: traces put names where raw ones have numbers), and unknown kinds and fields are carried untouched.
_FIELDS: dict[str, dict[str, tuple[type, str]]] = {
    "hypercall": {"name": (str, "a string")},
    "idle": {"until": (int, "an integer")},
    "xenstore": {"args": (list, "a list")},
}


def _check_fields(kind: str, d: dict[str, Any]) -> Optional[str]:
    for key, (typ, what) in _FIELDS.get(kind, {}).items():
        if key in d:
            v = d[key]
            if not isinstance(v, typ) or isinstance(v, bool) or (typ is int and not _is_u64(v)):
                return f"a {kind} record's {key} must be {what}"
    return None


#: the longest line a trace file may have (a record with a large decoded argument struct is some KiB)
MAX_LINE = 16 << 20


def _bounded_lines(f: Any, name: str) -> Iterable[str]:
    n = 0
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE:
            raise TraceFileError(f"{name}:{n}: line longer than {MAX_LINE} characters")
        yield line


def load(path: str) -> TraceFile:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise TraceFileError(f"{path}: {e.strerror}") from None
    except ValueError:                  # a NUL byte in the path
        raise TraceFileError(f"{path!r}: not a valid path") from None
    with f:
        try:
            return parse_lines(_bounded_lines(f, path), path)
        except UnicodeDecodeError:
            raise TraceFileError(f"{path}: not a text file (not UTF-8)") from None
        except OSError as e:            # e.g. a directory
            raise TraceFileError(f"{path}: {e.strerror}") from None


def select(records: Iterable[TraceRecord], kinds: Sequence[str] = (), names: Sequence[str] = ()) -> list[TraceRecord]:
    """Records of the given kinds (any if empty) whose name matches (hypercall name, `name(subop)`, xenstore
    type, inject target; any if empty)."""
    out = []
    for rec in records:
        if kinds and rec.kind not in kinds:
            continue
        if names and not any(n in _names_of(rec) for n in names):
            continue
        out.append(rec)
    return out


def _names_of(rec: TraceRecord) -> set[str]:
    d = rec.data
    names = {str(d[k]) for k in ("name", "type", "target", "timer", "source") if d.get(k) is not None}
    if d.get("subop") is not None:
        names.add(f"{d.get('name')}({d['subop']})")
        names.add(str(d["subop"]))
    return names


# -- one line per record ------------------------------------------------------------------------------------
def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 0xFFFF:
        return hex(value)
    return str(value)


def describe(rec: TraceRecord) -> str:
    """What happened, for humans: `event_channel_op(send) {port: 2} = 0  from notify+0x34`."""
    d = rec.data
    k = rec.kind
    if k == "hypercall":
        call = d.get("name", "?") + (f"({d['subop']})" if d.get("subop") is not None else "")
        text = call + (" " + _short(d["in"]) if d.get("in") else "")
        result = d.get("result")
        text += " = " + ("(no return)" if result is None else f"-{d['errno']}" if d.get("errno") else str(result))
        if d.get("out"):
            text += " -> " + _short(d["out"])
        if d.get("blocked"):
            text += " [blocked]"
        if d.get("site"):
            text += f"  from {d['site']}"
        return text
    if k == "event":
        return f"event {d.get('what')} port {d.get('port')} ({d.get('to')})"
    if k == "console":
        return f"console[{d.get('source')}] {json.dumps(d.get('data', ''))}"
    if k == "xenstore":
        return (f"xenstore {d.get('dir')} {d.get('type')} req {d.get('req_id')} tx {d.get('tx_id')} "
                f"{json.dumps(d.get('args', []))}")
    if k == "exception":
        where = f" at {d['site']}" if d.get("site") else f" at {_short(d.get('rip'))}"
        return f"exception {d.get('vector')} error_code {d.get('error_code')}{where}" + \
            (f" cr2 {_short(d['cr2'])}" if d.get("cr2") is not None else "")
    if k == "inject":
        rest = {key: v for key, v in d.items() if key not in ("target", "rule")}
        return f"inject {d.get('target')} {_short(rest)}  ({d.get('rule')})"
    if k == "upcall":
        return f"upcall vcpu {d.get('vcpu')} pending {d.get('pending', [])}"
    return k + " " + " ".join(f"{key}={_short(v)}" for key, v in sorted(d.items()))


def format_record(rec: TraceRecord) -> str:
    return f"{rec.seq:>7} {rec.time:>14} ns  {describe(rec)}"


# -- diff ---------------------------------------------------------------------------------------------------
@dataclass
class Divergence:
    index: int                         # position (0-based) of the first differing record
    a: Optional[TraceRecord]           # None: `a` ended first
    b: Optional[TraceRecord]
    before: list[TraceRecord]          # common records just before the divergence
    after_a: list[TraceRecord]
    after_b: list[TraceRecord]
    fields: list[str]                  # fields that differ (when both records exist)


def _key(rec: TraceRecord, ignore: frozenset[str]) -> dict[str, Any]:
    d = {"seq": rec.seq, "time": rec.time, "kind": rec.kind, **rec.data}
    return {k: v for k, v in d.items() if k not in ignore}


def diff(a: Sequence[TraceRecord], b: Sequence[TraceRecord], context: int = DEFAULT_CONTEXT,
         ignore: Iterable[str] = ()) -> Optional[Divergence]:
    """The first record where `a` and `b` differ (None if they are equal), ignoring the named fields."""
    ign = frozenset(ignore)
    n = min(len(a), len(b))
    for i in range(n + 1):
        if i == n:
            if len(a) == len(b):
                return None
            ra = a[i] if i < len(a) else None
            rb = b[i] if i < len(b) else None
            fields: list[str] = []
        else:
            ka, kb = _key(a[i], ign), _key(b[i], ign)
            if ka == kb:
                continue
            ra, rb = a[i], b[i]
            fields = sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))
        lo = max(0, i - context)
        return Divergence(i, ra, rb, list(a[lo:i]), list(a[i:i + context + 1]), list(b[i:i + context + 1]),
                          fields)
    return None


def format_divergence(div: Divergence, name_a: str = "a", name_b: str = "b") -> str:
    lines = [f"traces differ at record {div.index + 1}"
             + (f" (fields: {', '.join(div.fields)})" if div.fields else "")]
    for rec in div.before:
        lines.append(f"  {format_record(rec)}")
    for mark, name, recs, other in (("-", name_a, div.after_a, div.a), ("+", name_b, div.after_b, div.b)):
        if other is None:
            lines.append(f"{mark} [{name} ends here]")
        for rec in recs:
            lines.append(f"{mark} {format_record(rec)}")
    return "\n".join(lines)


def image_meta(kernel: str, domain: Any, rules: Optional[list[str]] = None) -> dict[str, Any]:
    """What a trace was recorded from. Deterministic: the image's base name and hash, never a host path."""
    try:
        with open(kernel, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        digest = None
    meta: dict[str, Any] = {"image": os.path.basename(kernel), "sha256": digest,
                            "memory_mib": domain.config.memory_mib, "cmdline": domain.config.cmdline}
    if rules:
        meta["inject"] = list(rules)
    return meta
