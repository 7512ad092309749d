"""Golden traces catch behaviour, not churn: a guest rebuilt with its code and data at other addresses still
matches its golden; a changed hypercall result, errno, argument value or record order does not."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess

import pytest
from regresslib import HELLO, ROOT, trace_run

from miniguest.regress import golden
from miniguest.regress.normalise import AddressNames, normalise

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                               reason="needs gcc and make to rebuild a guest")


def _build_hello(build: str, **make_vars: str) -> str:
    """Build the hello sample into `build` with the local toolchain (make variables override guest.mk)."""
    cmd = ["make", "-s", "-C", os.path.join(ROOT, "firmware"), f"BUILD={build}", f"{build}/hello.elf"]
    cmd += [f"{k}={v}" for k, v in make_vars.items()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return f"{build}/hello.elf"


def _golden_problem(tmp_path, recorded, recorded_dom, run, run_dom):
    path = str(tmp_path / "g.jsonl")
    golden.write(path, recorded, {"image": "hello.elf"}, AddressNames.from_domain(recorded_dom))
    return golden.check(path, run, names=AddressNames.from_domain(run_dom)).problem


@pytest.mark.slow
@needs_gcc
def test_a_rebuild_that_moves_code_and_data_keeps_the_golden(tmp_path):
    """The same sources linked in another order: every function, string and buffer of the common code moves,
    the guest does exactly the same. Raw traces differ, the golden (normal form) does not."""
    plain = _build_hello(str(tmp_path / "a"))
    moved = _build_hello(str(tmp_path / "b"), COMMON="common/head.S",
                         hello_SRCS="hello/hello.c common/console.c common/lib.c")
    dom_a, rec_a = trace_run(plain)
    dom_b, rec_b = trace_run(moved)
    try:
        sym_a, sym_b = dom_a.symbols.address_of("hv_write"), dom_b.symbols.address_of("hv_write")
        assert sym_a != sym_b                                  # the rebuild really moved the code
        assert dom_a.layout == dom_b.layout                   # ... within the same start-of-day layout
        raw_a = [r.to_json() for r in rec_a]
        raw_b = [r.to_json() for r in rec_b]
        assert raw_a != raw_b                                  # so the raw traces differ (callers, pointers)
        assert len(rec_a) == len(rec_b) > 40
        assert _golden_problem(tmp_path, rec_a, dom_a, rec_b, dom_b) is None
        # The normal form names what moved: call sites and pointer arguments by symbol.
        norm = normalise(rec_b, AddressNames.from_domain(dom_b))
        writes = [r for r in norm if r.kind == "hypercall" and r.data["name"] == "console_io"]
        assert writes and all(isinstance(r.data["args"][2], str) for r in writes)
        assert all("caller" not in r.data for r in norm if r.kind == "hypercall")
    finally:
        dom_a.close()
        dom_b.close()


@pytest.fixture(scope="module")
def hello_run():
    dom, records = trace_run(HELLO)
    yield dom, records
    dom.close()


def _first_hypercall(records, name, subop=None):
    for i, r in enumerate(records):
        if r.kind == "hypercall" and r.data["name"] == name and (subop is None or r.data["subop"] == subop):
            return i
    raise AssertionError(f"no {name}({subop}) in the trace")


def _planted(records, edit):
    out = copy.deepcopy(records)
    edit(out)
    return out


def _result(records):
    i = _first_hypercall(records, "xen_version", "version")
    records[i].data["result"] = -1
    records[i].data["errno"] = "EPERM"
    del records[i].data["out"]


def _errno(records):
    i = _first_hypercall(records, "event_channel_op", "send")
    records[i].data["result"], records[i].data["errno"] = -22, "EINVAL"


def _argument(records):
    i = _first_hypercall(records, "console_io", "write")
    records[i].data["args"][1] += 1                          # count: a value, not a pointer
    records[i].data["in"]["count"] += 1


def _decoded_argument(records):
    i = _first_hypercall(records, "event_channel_op", "send")
    records[i].data["in"]["port"] = 3


def _pointer_elsewhere(records):
    i = _first_hypercall(records, "console_io", "write")
    records[i].data["args"][2] = 0                           # a NULL buffer instead of the string


def _order(records):
    i = _first_hypercall(records, "xen_version", "version")
    j = _first_hypercall(records, "xen_version", "extraversion")
    records[i], records[j] = records[j], records[i]


def _missing(records):
    del records[_first_hypercall(records, "event_channel_op", "send")]


@pytest.mark.parametrize("edit, fields", [
    (_result, {"result", "errno", "out"}),
    (_errno, {"result", "errno"}),
    (_argument, {"args", "in"}),
    (_decoded_argument, {"in"}),
    (_pointer_elsewhere, {"args"}),
    (_order, None),
    (_missing, None),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_a_planted_change_is_reported(tmp_path, hello_run, edit, fields):
    dom, records = hello_run
    problem = _golden_problem(tmp_path, records, dom, _planted(records, edit), dom)
    assert problem is not None and "traces differ at record" in problem, problem
    if fields is not None:
        reported = set(problem.split("(fields: ", 1)[1].split(")", 1)[0].split(", "))
        assert reported == fields, problem


def test_the_same_run_matches_and_the_golden_has_no_raw_addresses(tmp_path, hello_run):
    dom, records = hello_run
    assert _golden_problem(tmp_path, records, dom, records, dom) is None
    lines = (tmp_path / "g.jsonl").read_text().splitlines()
    head = json.loads(lines[0])
    assert head["meta"] == {"image": "hello.elf", "normalised": True}          # no sha256
    body = [json.loads(x) for x in lines[1:]]
    calls = [d for d in body if d["kind"] == "hypercall"]
    assert calls and not any("caller" in d for d in calls)
    # No argument of the hello guest is a number in the kernel's address range any more.
    assert not any(isinstance(a, int) and a >= 0xffffffff80000000 for d in calls for a in d["args"])


def test_a_golden_with_raw_addresses_asks_to_be_re_recorded(tmp_path, hello_run):
    from miniguest.debug.tracer import write_jsonl
    dom, records = hello_run
    path = tmp_path / "old.jsonl"
    write_jsonl(records, str(path), {"image": "hello.elf", "sha256": "0" * 64})
    problem = golden.check(str(path), records, names=AddressNames.from_domain(dom)).problem
    assert problem and "re-record it with --update-golden" in problem


def test_pointer_kinds_follow_xens_prototypes():
    """Arguments Xen declares as guest handles are pointers; values that only look like addresses are not."""
    from miniguest.debug.tracer import TraceRecord
    names = AddressNames(lookup=lambda a: ("buf", a - 0x1000) if 0x1000 <= a < 0x2000 else None,
                         image=(0x1000, 0x2000), regions=[(0x5000, 0x6000, "start_info")])

    def norm(name, args, **data):
        return normalise([TraceRecord(1, 0, "hypercall", {"name": name, "args": args, "caller": 0x1234, **data})],
                         names)[0].data

    assert norm("console_io", [0, 0x1010, 0x1010])["args"] == [0, 0x1010, "buf+0x10"]   # count stays a count
    assert norm("console_io", [0, 5, 0x9000])["args"] == [0, 5, "<ptr>"]                 # a buffer elsewhere
    assert norm("console_io", [0, 5, 0])["args"] == [0, 5, 0]                             # NULL stays NULL
    assert norm("console_io", [0, 5, 0xdead000000000000])["args"] == [0, 5, 0xdead000000000000]  # non-canonical
    assert norm("sched_op", [3, 0x5008])["args"] == [3, "<start_info+0x8>"]
    assert norm("set_timer_op", [0x1010])["args"] == [0x1010]                             # a time, not a pointer
    # Addresses by meaning: named when they can be, else kept (a va the guest chose is behaviour).
    uvm = norm("update_va_mapping", [0x1000, 0x1067, 2], **{"in": {"va": 0x1000, "val": 0x1067}})
    assert uvm["args"] == ["buf", 0x1067, 2] and uvm["in"] == {"va": "buf", "val": 0x1067}
    assert norm("update_va_mapping", [0x400000, 7, 2])["args"] == [0x400000, 7, 2]
    traps = norm("set_trap_table", [0x1100], **{"in": {"traps": [{"vector": 0, "handler": 0x1020}]}})
    assert traps["in"]["traps"] == [{"vector": 0, "handler": "buf+0x20"}] and "caller" not in traps
    # Normalising twice changes nothing.
    rec = TraceRecord(1, 0, "hypercall", {"name": "console_io", "args": [0, 5, 0x1010], "caller": 1})
    once = normalise([rec], names)
    assert normalise(once, names)[0].data == once[0].data


@pytest.mark.slow
def test_cli_records_the_normal_form_and_diffs_it_against_the_repository_golden(tmp_path):
    from guestlib import cli
    run = tmp_path / "run.jsonl"
    r = cli("trace", "record", "hello", "--quiet", "--normalise", "-o", str(run))
    assert r.returncode == 0, r.stderr.decode()
    r = cli("trace", "diff", os.path.join(ROOT, "tests", "golden", "hello.jsonl"), str(run))
    assert r.returncode == 0 and r.stdout.decode().startswith("traces are identical"), r.stdout + r.stderr
    raw = tmp_path / "raw.jsonl"
    assert cli("trace", "record", "hello", "--quiet", "-o", str(raw)).returncode == 0
    r = cli("trace", "diff", os.path.join(ROOT, "tests", "golden", "hello.jsonl"), str(raw))
    assert r.returncode == 2
    assert "is a normalised trace (a golden)" in r.stderr.decode() and "--normalise" in r.stderr.decode()
