"""Fault injection: rules from the CLI and the Python API; every injection is a trace record; the errnos
are Xen's; rules that cannot mean anything are refused in one line."""
from __future__ import annotations

import json

import pytest
from guestlib import cli
from regresslib import HELLO, MINIOS, traced

from miniguest.regress.faults import FaultInjector, RuleError, When, parse_rule


def test_hypercall_rule_fails_exactly_the_chosen_calls():
    dom, tracer = traced(HELLO)
    fi = FaultInjector(["hypercall:console_io:write:-EIO@2,4"]).attach(dom)
    dom.run()
    writes = [r for r in tracer.records if r.kind == "hypercall" and r.data["subop"] == "write"]
    assert [w.data.get("errno") for w in writes[:5]] == [None, "EIO", None, "EIO", None]
    assert [i["occurrence"] for i in fi.injected] == [2, 4]
    injects = [r for r in tracer.records if r.kind == "inject"]
    assert [r.seq + 1 for r in injects] == [writes[1].seq, writes[3].seq]     # right before the failed call


def test_rules_with_every_and_ranges():
    assert When.parse("*").hits(1000) and When.parse("3+").hits(3) and not When.parse("3+").hits(2)
    assert When.parse("2-4").hits(4) and not When.parse("2-4").hits(5)
    assert parse_rule("hypercall:sched_op:block:EINTR").when.hits(7)           # default: every call


def test_event_drop_and_delay_on_minios():
    dom, tracer = traced(MINIOS, cmdline="ticks=2")
    FaultInjector(["event:drop:virq=TIMER@3", "event:delay:virq=TIMER:2500000@5"]).attach(dom)
    dom.run()
    assert dom.shutdown_reason == "poweroff"
    injects = [r.data for r in tracer.records if r.kind == "inject"]
    assert [(i["action"], i["occurrence"]) for i in injects] == [("drop", 3), ("delay", 5)]
    delayed = next(r for r in tracer.records if r.kind == "inject" and r.data["action"] == "delay")
    raised = [r for r in tracer.records if r.kind == "event" and r.data["what"] == "raise"
              and r.data["to"] == "virq VIRQ_TIMER" and r.time >= delayed.time]
    assert raised[0].time == delayed.time + 2_500_000


def test_send_direction_drops_a_notification_to_dom0():
    dom, tracer = traced(HELLO)
    FaultInjector(["event:drop:port=2,dir=send@1"]).attach(dom)
    dom.run()
    # The console backend missed the first kick; the second one drains the ring, so nothing is lost.
    assert dom.console.text.count("Hello from a Xen PV guest") == 1
    assert [r.data["dir"] for r in tracer.records if r.kind == "inject"] == ["send"]


def test_xenstore_rule_by_path_from_the_python_api():
    dom, tracer = traced(MINIOS, cmdline="ticks=1")
    dom.fault_injector = FaultInjector(["xenstore:read:path=domid:ENOENT@1"])     # attaches on first use
    dom.run()
    i = next(r for r in tracer.records if r.kind == "inject")
    assert (i.data["op"], i.data["path"], i.data["errno"]) == ("READ", "domid", "ENOENT")
    reply = next(r for r in tracer.records if r.kind == "xenstore" and r.seq > i.seq)
    assert (reply.data["dir"], reply.data["type"], reply.data["args"]) == ("reply", "ERROR", ["ENOENT"])


@pytest.mark.slow
def test_cli_inject_on_boot_and_trace_record(tmp_path):
    r = cli("boot", MINIOS, "--quiet", "--inject", "hypercall:event_channel_op:bind_virq:-ENOSPC@1")
    assert r.returncode == 3 and b"Traceback" not in r.stderr
    out = tmp_path / "t.jsonl"
    r = cli("trace", "record", HELLO, "--quiet", "-o", str(out), "--inject", "hypercall:xen_version:*:-EPERM@*")
    assert r.returncode == 3                                  # hello's checks fail: it crashes on purpose
    head, *records = [json.loads(line) for line in out.read_text().splitlines()]
    assert head["meta"]["inject"] == ["hypercall:xen_version:*:-EPERM@*"]
    calls = [r for r in records if r["kind"] == "hypercall" and r["name"] == "xen_version"]
    assert len(calls) == 3 and all(c["errno"] == "EPERM" for c in calls)
    assert sum(r["kind"] == "inject" for r in records) == 3


@pytest.mark.parametrize("rule,message", [
    ("hypercall:nope:EIO", "unknown hypercall 'nope'"),
    ("hypercall:event_channel_op:bind_vriq:ENOSPC", "has no sub-op 'bind_vriq'"),
    ("hypercall:sched_op:ENOTANERRNO", "is not a Xen errno"),
    ("hypercall:sched_op:-9999", "is not a Xen errno"),
    ("event:drop:port=3@0", "occurrences count from 1"),
    ("event:delay:port=3:-5", "must be positive"),
    ("event:drop:virq=TIMER,dir=send", "only ever raised"),
    ("xenstore:read:EFAULT", "xenstored cannot send EFAULT"),
    ("disk:fail", "unknown target"),
])
def test_bad_rules_are_refused_in_one_line(rule, message):
    with pytest.raises(RuleError) as info:
        parse_rule(rule)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_bad_rule_is_a_usage_error():
    r = cli("boot", HELLO, "--inject", "hypercall:nope:EIO")
    assert r.returncode == 2 and b"unknown hypercall 'nope'" in r.stderr and b"Traceback" not in r.stderr
