"""The trace tools: decoded records, `trace show/diff/export`, and the Perfetto export as valid
trace-event JSON (tracks per vCPU and per backend, complete events for hypercalls)."""
from __future__ import annotations

import json

import pytest

from guestlib import cli
from regresslib import HELLO, MINIOS, trace_run

from miniguest.regress import perfetto
from miniguest.hypervisor.host import HYPERCALLS
from miniguest.regress.trace_files import diff, load, parse_lines


def _first(records, **match):
    return next(r for r in records if all(r.data.get(k) == v or (k == "kind" and r.kind == v)
                                          for k, v in match.items()))


def test_decoded_hypercalls_of_minios():
    _, recs = trace_run(MINIOS, cmdline="ticks=1")
    virq = _first(recs, kind="hypercall", subop="bind_virq")
    assert virq.data["in"] == {"virq": "TIMER", "vcpu": 0} and virq.data["out"] == {"port": 3}
    assert virq.data["site"].startswith("bind_virq+")
    send = _first(recs, kind="hypercall", subop="send")
    assert set(send.data["in"]) == {"port"}
    mmu = _first(recs, kind="hypercall", name="mmu_update")
    assert mmu.data["in"]["reqs"][0]["cmd"] == "normal" and "done" not in mmu.data.get("out", {})
    shutdown = [r for r in recs if r.kind == "hypercall" and r.data["subop"] == "shutdown"][-1]
    assert shutdown.data["in"] == {"reason": "poweroff"}
    traps = _first(recs, kind="hypercall", name="set_trap_table")
    assert {"vector": 14, "flags": 0, "cs": 0xE033, "handler": "page_fault"} in traps.data["in"]["traps"]
    xs = _first(recs, kind="xenstore", type="READ")
    assert xs.data["dir"] == "request" and xs.data["domid"] == 1
    upcall = _first(recs, kind="upcall")
    assert isinstance(upcall.data["pending"], list)


def test_every_subop_with_a_struct_has_a_decoder():
    have = {(n, s) for n, s, _ in HYPERCALLS.registered_decoders()}
    for name, subop in [("event_channel_op", "bind_virq"), ("event_channel_op", "alloc_unbound"),
                        ("sched_op", "shutdown"), ("sched_op", "poll"), ("memory_op", "populate_physmap"),
                        ("memory_op", "decrease_reservation"), ("mmu_update", None), ("mmuext_op", None),
                        ("grant_table_op", "setup_table"), ("vcpu_op", "set_singleshot_timer"), ("multicall", None),
                        ("callback_op", "register"), ("set_trap_table", None), ("iret", None)]:
        assert (name, subop) in have, (name, subop)


@pytest.mark.slow
def test_show_diff_export_cli(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert cli("trace", "record", HELLO, "-o", str(a), "--quiet").returncode == 0
    assert cli("trace", "record", HELLO, "-o", str(b), "--quiet").returncode == 0
    r = cli("trace", "diff", str(a), str(b))
    assert r.returncode == 0 and b"identical" in r.stdout
    r = cli("trace", "show", str(a), "--kind", "hypercall", "--name", "xen_version(version)")
    assert r.stdout.decode().strip().endswith("xen_version(version) = 262163 -> {major: 4, minor: 19}  from guest_main+0x76")
    c = tmp_path / "c.jsonl"
    r = cli("trace", "record", HELLO, "-o", str(c), "--quiet", "--inject", "hypercall:xen_version:pagesize:-EINVAL@1")
    r = cli("trace", "diff", str(a), str(c), "--context", "2")
    out = r.stdout.decode()
    assert r.returncode == 1 and out.startswith("traces differ at record 35")
    assert "-      35" in out and "+      35" in out and "inject hypercall" in out
    r = cli("trace", "diff", str(a), str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2 and r.stderr.decode().count("\n") == 1
    r = cli("trace", "export", str(a), "-o", str(tmp_path / "a.json"))
    assert r.returncode == 0 and perfetto.validate(json.loads((tmp_path / "a.json").read_text())) == []


def test_perfetto_export_is_valid_trace_event_json(tmp_path):
    out = tmp_path / "m.jsonl"
    pf = tmp_path / "m.json"
    r = cli("trace", "record", MINIOS, "-c", "ticks=2", "-o", str(out), "--perfetto", str(pf), "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(pf.read_text())
    assert perfetto.validate(doc) == []
    events = doc["traceEvents"]
    threads = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"vCPU 0", "dom0: console backend", "dom0: xenstored"} <= threads
    slices = [e for e in events if e["ph"] == "X" and e["cat"] == "hypercall"]
    assert len(slices) == sum(1 for r in load(str(out)).records if r.kind == "hypercall")
    blocked = [e for e in slices if e["name"] == "sched_op(block)"]
    assert blocked and all(e["dur"] > 0 for e in blocked)       # a block lasts until the vCPU wakes
    assert any(e["ph"] == "i" and e["cat"] == "timer" for e in events)
    assert any(e["tid"] == perfetto.BACKEND_TIDS["xenstore"] for e in events if e["ph"] == "i")


def test_trace_files_are_validated():
    import pytest
    from miniguest.regress.trace_files import TraceFileError
    for text, msg in [("", "empty"), ('{"format":"x"}\n', "not a miniguest trace"),
                      ('{"format":"miniguest-trace","version":9}\n', "version 9"),
                      ('{"format":"miniguest-trace","version":1}\n{"seq":"x"}\n', "integer seq"),
                      ('{"format":"miniguest-trace","version":1}\nnot json\n', "not JSON")]:
        with pytest.raises(TraceFileError, match=msg):
            parse_lines(text.splitlines(), "t")
    assert diff([], []) is None
