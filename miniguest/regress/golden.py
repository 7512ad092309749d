"""Golden traces: a run's trace compared with a trace file kept in the repository.

A golden trace pins down everything a guest did to the hypervisor and what it got back, so an unintended
change in hypercall handling shows up as the first diverging record with its context. When a change is
intended, regenerate with `--update-golden` (pytest) and review the diff of the golden file like code.

Goldens are kept in the normal form of miniguest.regress.normalise: pointers and call sites by name, no raw
return addresses, no image hash, so rebuilding a guest whose behaviour did not change leaves them valid.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from miniguest.debug.tracer import TraceRecord, header_line
from miniguest.regress.normalise import AddressNames, NO_NAMES, is_normalised, normalise, normalised_meta
from miniguest.regress.trace_files import DEFAULT_CONTEXT, TraceFileError, diff, format_divergence, load


@dataclass
class GoldenResult:
    path: str
    updated: bool                     # the golden file was (re)written
    problem: Optional[str]            # None: the trace matches


def write(path: str, records: Sequence[TraceRecord], meta: Optional[dict[str, Any]] = None,
          names: AddressNames = NO_NAMES) -> None:
    """Write `records` (raw or already normalised) as a golden file, in the normal form."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(header_line(normalised_meta(meta)) + "\n")
        for rec in normalise(records, names):
            f.write(rec.to_json() + "\n")


def check(path: str, records: Sequence[TraceRecord], meta: Optional[dict[str, Any]] = None, update: bool = False,
          ignore: Iterable[str] = (), context: int = DEFAULT_CONTEXT,
          names: AddressNames = NO_NAMES) -> GoldenResult:
    """Compare `records` with the golden file at `path` (or rewrite it when `update`). `names` names the
    addresses of the run's guest (AddressNames.from_domain); the comparison is between normal forms."""
    if update:
        write(path, records, meta, names)
        return GoldenResult(path, True, None)
    if not os.path.exists(path):
        return GoldenResult(path, False, f"no golden trace {path}: run pytest with --update-golden to create it")
    try:
        golden = load(path)
    except TraceFileError as e:
        return GoldenResult(path, False, str(e))
    if not is_normalised(golden.meta):
        return GoldenResult(path, False, f"{path} holds raw addresses (a golden from before normalised traces): "
                                         "re-record it with --update-golden")
    div = diff(golden.records, normalise(records, names), context=context, ignore=ignore)
    if div is None:
        return GoldenResult(path, False, None)
    return GoldenResult(path, False, f"trace differs from {path} (run with --update-golden if intended):\n"
                                     + format_divergence(div, "golden", "this run"))
