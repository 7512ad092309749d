"""Snapshots: stop a domain at a defined point, snapshot, restore into fresh domains, and get the same
remaining trace as the original run continuing from that point; snapshot files are untrusted input."""
from __future__ import annotations

import json
import struct

import pytest
from regresslib import MINIOS, SELFTEST, PauseAfter, lines, traced

from miniguest.debug.tracer import Tracer
from miniguest.hypervisor import vcpu as vcpu_module
from miniguest.hypervisor.x86 import cpu as cpu_defs
from miniguest.regress import snapshot as S
from miniguest.regress.faults import FaultInjector
from miniguest.regress.snapfile import SnapshotError
from miniguest.regress.snapshot import Snapshot


def stopped_after(path: str, n: int, **options):
    dom, tracer = traced(path, **options)
    dom.hypercall_observers.append(PauseAfter(n))
    assert dom.run() == "paused"
    return dom, tracer


def remaining_equal(path: str, n: int, **options) -> None:
    dom, tracer = stopped_after(path, n, **options)
    k = len(tracer.records)
    snap = Snapshot.from_bytes(Snapshot.capture(dom).to_bytes())
    dom.run()
    restored = snap.restore()
    t2 = Tracer(restored).attach()
    restored.run()
    assert [r.data for r in t2.records] == [r.data for r in tracer.records[k:]]
    assert [r.time for r in t2.records] == [r.time for r in tracer.records[k:]]
    assert restored.console.text == dom.console.text
    assert (restored.state, restored.shutdown_reason) == (dom.state, dom.shutdown_reason)
    dom.close()
    restored.close()


@pytest.mark.parametrize("n", [1, 60, 500])
def test_minios_restored_run_continues_identically(n):
    remaining_equal(MINIOS, n)


@pytest.mark.parametrize("scenario,n", [("usermode", 6), ("evtchn", 30), ("mmu", 10), ("watchdog", 5)])
def test_selftest_restored_run_continues_identically(scenario, n):
    remaining_equal(SELFTEST, n, cmdline=scenario)


@pytest.mark.parametrize("at_ns", [5_000_000, 25_000_000, 1_000_000_000])
def test_stopped_with_run_until_restores_identically(at_ns):
    """Stopped by run(until=...) at a virtual time -- mid-boot, blocked between timer ticks, later."""
    dom, tracer = traced(MINIOS, cmdline="ticks=2")
    assert dom.run(until=lambda d: d.clock.now_ns() >= at_ns) == "paused"
    k = len(tracer.records)
    restored = Snapshot.capture(dom).restore()
    t2 = Tracer(restored).attach()
    dom.run()
    restored.run()
    assert [(r.time, r.kind, r.data) for r in t2.records] == [(r.time, r.kind, r.data) for r in tracer.records[k:]]
    assert restored.console.text == dom.console.text


def test_scrambled_mfns_restore_identically():
    remaining_equal(MINIOS, 100, scramble_mfns=True)


@pytest.mark.slow
def test_many_variations_from_one_snapshot():
    """One snapshot after boot, restored again and again: with and without injected faults."""
    dom, tracer = stopped_after(MINIOS, 60)
    snap = Snapshot.capture(dom)
    dom.run()
    reference = lines(tracer.records)
    outcomes = []
    for rules in ([], ["event:drop:virq=TIMER@1-150"], [], ["event:delay:virq=TIMER:3000000@1-5"]):
        d = snap.restore()
        if rules:
            FaultInjector(rules).attach(d)
        t = Tracer(d).attach()
        d.run(until=lambda d: d.clock.now_ns() > 10 ** 10)    # a guard: 10 s of virtual time
        outcomes.append((d.state, [r.to_json() for r in t.records]))
        d.close()
    assert outcomes[0] == outcomes[2]                         # deterministic: same snapshot, same run
    assert outcomes[0][0] == "shutdown"
    assert sum('"kind":"inject"' in line for line in outcomes[1][1]) == 150
    assert outcomes[1][1] != outcomes[0][1]
    assert any('"kind":"inject"' in line for line in outcomes[3][1])
    assert outcomes[3][0] == "shutdown"
    k = len(reference) - len(outcomes[0][1])
    assert [json.loads(x)["kind"] for x in outcomes[0][1]] == [json.loads(x)["kind"] for x in reference[k:]]


def test_pending_delayed_event_survives_a_snapshot():
    """A notification held back by fault injection is part of the state: it is delivered after restore."""
    def run(pause_after: int | None):
        dom, tracer = traced(MINIOS)
        FaultInjector(["event:delay:virq=TIMER:7000000@1"]).attach(dom)
        if pause_after:
            dom.hypercall_observers.append(PauseAfter(pause_after))
        return dom, tracer

    whole, t_whole = run(None)
    whole.run()
    dom, tracer = run(None)
    injected_at = None

    class StopAtInject:
        def __call__(self, kind, fields):
            nonlocal injected_at
            if kind == "inject" and injected_at is None:
                injected_at = len(tracer.records)
                dom.pause()
    dom.trace_sinks.append(StopAtInject())
    assert dom.run() == "paused"
    snap = Snapshot.capture(dom)
    assert [t["what"] for t in snap.header["timers"]].count("delayed_event") == 1
    restored = snap.restore()
    again = Snapshot.capture(restored)                 # still held back: part of the restored domain too
    assert again.header["timers"] == snap.header["timers"]
    t2 = Tracer(restored).attach()
    restored.run()
    k = len(tracer.records)
    assert [r.data for r in t2.records] == [r.data for r in t_whole.records[k:]]


def test_file_round_trip_and_info(tmp_path):
    dom, _ = stopped_after(MINIOS, 60)
    path = tmp_path / "boot.snap"
    S.save_snapshot(dom, str(path))
    snap = Snapshot.load(str(path))
    info = snap.info()
    assert info["image"] == "minios.elf" and info["state"] == "paused" and info["time_ns"] == dom.clock.now_ns()
    assert path.stat().st_size < 1 << 20              # zero pages are not stored
    restored = S.restore_snapshot(str(path))
    assert restored.clock.now_ns() == dom.clock.now_ns()
    assert restored.store.read(f"/local/domain/{restored.domid}/name") == b"minios"
    stack = dom.xen.stack_mfn * 4096                    # Xen's stack holds the restore's re-entry frame
    assert bytes(restored.mem.mv[:stack]) == bytes(dom.mem.mv[:stack])
    assert bytes(restored.mem.mv[stack + 4096:]) == bytes(dom.mem.mv[stack + 4096:])
    assert restored.frames.save() == dom.frames.save()
    assert restored.p2m == dom.p2m


def test_xenstore_connection_state_is_restored():
    """Watches, an open transaction and queued output of the domain's ring connection come back."""
    dom, _ = stopped_after(MINIOS, 60)
    daemon = dom.xenstored
    conn = daemon.domains[dom.domid]
    conn.add_watch(b"device", b"tok")
    tx = conn.start_transaction()
    daemon.store.write(conn, f"/local/domain/{dom.domid}/data/x", b"in-tx", tx)
    dom.store.write(f"/local/domain/{dom.domid}/tool-y", "outside")     # dom0, in the domain's home
    restored = Snapshot.capture(dom).restore()
    rconn = restored.xenstored.domains[restored.domid]
    assert [(w.path, w.token, w.prefix_len) for w in rconn.watches] == \
        [(w.path, w.token, w.prefix_len) for w in conn.watches]
    assert list(rconn.transactions) == [tx.id] and rconn._next_tx_id == conn._next_tx_id
    assert restored.store.read(f"/local/domain/{dom.domid}/tool-y") == b"outside"
    assert not restored.store.exists("/local/domain/1/data/x")            # still only inside the transaction
    assert restored.xenstored.store.generation == daemon.store.generation
    restored.xenstored.store.commit(rconn.transactions[tx.id])
    assert restored.store.read("/local/domain/1/data/x") == b"in-tx"
    daemon.store.commit(tx)
    assert restored.xenstored.store.generation == daemon.store.generation


def test_every_vcpu_attribute_is_accounted_for():
    """A new piece of PV vCPU state must be added to the snapshot (or declared runtime-only)."""
    dom, _ = traced(SELFTEST)
    V = vcpu_module
    known = set(V.SAVED_INTS + V.SAVED_BOOLS + V.SAVED_SPECIAL + V.NOT_SAVED)
    private = {name for name in vars(dom.vcpus[0]) if name.startswith("_")}
    assert set(vars(dom.vcpus[0])) - known - private == set()
    assert vcpu_module.Vcpu is type(dom.vcpus[0])


def test_debug_and_cr4_state_is_carried():
    """%cr4.DE and the debug registers a guest set survive a snapshot; a file without them (written before
    they were carried) restores the reset values."""
    dom, _ = stopped_after(SELFTEST, 5, cmdline="usermode")
    v = dom.vcpus[0]
    v.cr4_ctl = cpu_defs.CR4_DE
    v.debugreg[0] = 0x1234000
    v.debugreg[7] = 0x400 | (1 << 9)                     # GE: a value set_debugreg accepts
    snap = Snapshot.from_bytes(Snapshot.capture(dom).to_bytes())
    r = snap.restore().vcpus[0]
    assert (r.cr4_ctl, r.debugreg) == (cpu_defs.CR4_DE, v.debugreg)
    old = Snapshot.capture(dom)
    for name in ("cr4_ctl", "debugreg"):
        del old.container.header["vcpus"][0]["pv"][name]
    r = Snapshot.from_bytes(old.to_bytes()).restore().vcpus[0]
    assert (r.cr4_ctl, r.debugreg[6:]) == (0, [cpu_defs.DR6_DEFAULT, cpu_defs.DR7_DEFAULT])
    bad = Snapshot.capture(dom)
    bad.container.header["vcpus"][0]["pv"]["cr4_ctl"] = 1
    with pytest.raises(SnapshotError, match="cr4_ctl"):
        Snapshot.from_bytes(bad.to_bytes()).restore()


def _with_frames(snap, change):
    """A copy of a captured snapshot whose frame-table arrays went through `change(arrays)`."""
    import array
    secs = dict(snap.container.sections)
    arrays = {}
    for name, code in (("owner", "h"), ("type", "B"), ("count", "I"), ("flags", "B")):
        arrays[name] = array.array(code, secs[f"frames.{name}"])
    change(arrays)
    for name, a in arrays.items():
        secs[f"frames.{name}"] = a.tobytes()
    snap.container.sections = secs
    return Snapshot.from_bytes(snap.to_bytes())


def test_a_page_type_state_that_does_not_add_up_is_refused():
    """A file's frame table is checked against the page tables it comes with (page_types.audit_domain):
    an extra type reference, a page table turned into a writable page, a Xen-heap page made pinnable."""
    dom, _ = stopped_after(SELFTEST, 20, cmdline="layout")
    l4 = dom.vcpus[0].guest_table
    shared = dom.xen.shared_info_mfn
    cases = [(lambda a: a["count"].__setitem__(l4, a["count"][l4] + 1), "count"),
             (lambda a: a["type"].__setitem__(l4, 7), "type|writable|references|not a validated L4"),
             (lambda a: (a["count"].__setitem__(shared, 0), a["type"].__setitem__(shared, 0)), "count|type")]
    for change, message in cases:
        bad = _with_frames(Snapshot.capture(dom), change)
        with pytest.raises(SnapshotError, match="(page-type state does not add up|guest_table).*(" + message + ")"):
            bad.restore()
    assert Snapshot.capture(dom).restore().state == dom.state


def test_timer_virq_binding_is_restored():
    """A restored vCPU knows VIRQ_TIMER is bound: stopping and restarting its periodic timer re-arms it, as
    in the original domain."""
    dom, _ = traced(MINIOS, cmdline="ticks=2")
    assert dom.run(until=lambda d: d.clock.now_ns() >= 25_000_000) == "paused"
    assert dom.vcpus[0].timer.virq_bound
    restored = Snapshot.capture(dom).restore()
    timer = restored.vcpus[0].timer
    assert timer.virq_bound
    timer.stop_periodic()
    timer.start_periodic(restored.clock.now_ns())
    assert timer.periodic is not None


def test_every_domain_attribute_is_accounted_for():
    dom, _ = traced(MINIOS, cmdline="ticks=1")
    dom.run()
    assert set(vars(dom)) - set(S.DOMAIN_CARRIED + S.DOMAIN_REBUILT) == set()


def test_a_running_domain_cannot_be_snapshotted():
    dom, _ = traced(SELFTEST, cmdline="layout")
    dom.state = "running"
    with pytest.raises(SnapshotError, match="running"):
        Snapshot.capture(dom)


# -- hostile files ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_bytes() -> bytes:
    dom, _ = stopped_after(MINIOS, 60)
    return Snapshot.capture(dom).to_bytes()


def _rewrite_header(data: bytes, change) -> bytes:
    magic, version, hlen = struct.unpack_from("<8sII", data)
    header = json.loads(data[16:16 + hlen])
    change(header)
    head = json.dumps(header).encode()
    return struct.pack("<8sII", magic, version, len(head)) + head + data[16 + hlen:]


@pytest.mark.parametrize("mutate,message", [
    (lambda d: b"NOTASNAP" + d[8:], "bad magic"),
    (lambda d: d[:100], "does not fit"),
    (lambda d: d[:8] + struct.pack("<I", 9) + d[12:], "container version 9"),
    (lambda d: d[:-10] + bytes(10), "corrupt|checksum|longer"),
    (lambda d: _rewrite_header(d, lambda h: h.update(version=1)), "header version 1"),
    (lambda d: _rewrite_header(d, lambda h: h["events"]["ports"].append([9999, 2, 0, 0, 1, -1])), "out of range"),
    (lambda d: _rewrite_header(d, lambda h: h["vcpus"][0]["regs"].update(rip=-1)), "regs.rip"),
    (lambda d: _rewrite_header(d, lambda h: h["vcpus"][0]["pv"].update(gdt_frames=[10 ** 9])), "gdt_frames"),
    (lambda d: _rewrite_header(d, lambda h: h["domain"].update(state="running")), "not a stopped state"),
    (lambda d: _rewrite_header(d, lambda h: h["timers"].append({"what": "bomb", "deadline": 1})), "unknown kind"),
    (lambda d: _rewrite_header(d, lambda h: h["sections"][0].update(raw_size=1 << 40)), "too large"),
    (lambda d: _rewrite_header(d, lambda h: h["backends"]["xenstore"]["nodes"].append(["/x", {"value": "",
                               "perms": ["q9"], "children": [], "generation": 1}])), "permission"),
])
def test_hostile_snapshot_files_fail_with_one_line(good_bytes, mutate, message):
    import re
    with pytest.raises(SnapshotError) as info:
        Snapshot.from_bytes(mutate(good_bytes)).restore()
    text = str(info.value)
    assert "\n" not in text and re.search(message, text), text


@pytest.mark.slow
def test_cli_snapshot_save_info_run(tmp_path):
    from guestlib import cli
    snap = tmp_path / "m.snap"
    r = cli("snapshot", "save", MINIOS, "-o", str(snap), "--after-hypercalls", "60", "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    r = cli("snapshot", "info", str(snap))
    assert r.returncode == 0 and "minios.elf" in r.stdout.decode()
    r = cli("snapshot", "run", str(snap), "--quiet", "--trace", str(tmp_path / "t.jsonl"))
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "t.jsonl").read_text().count('"kind":"timer"') > 100
    (tmp_path / "bad.snap").write_bytes(b"\x89MGSNAP\n" + bytes(20))
    r = cli("snapshot", "run", str(tmp_path / "bad.snap"))
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1
