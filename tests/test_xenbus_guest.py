"""minios's xenbus client against miniguest's xenstored, through the real ring and event channel.

The guest runs Mini-OS's xenbus self-test, watches memory/target and control/shutdown; the host side of each
test is the dom0 Python API (`domain.store`) used while the guest is paused at a known point, or the CLI's
store socket while `miniguest boot` runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Callable

import pytest

from miniguest import Domain, samples
from miniguest.abi import xs_wire as W
from miniguest.toolstack.exit_status import SHUTDOWN_EXIT
from miniguest.hypervisor import domain as D

MINIOS = samples.path("minios")
SELFTEST_DONE = "xenbus test passed: 7/7 checks ok"


def boot(cmdline: str = "ticks=0") -> Domain:
    assert MINIOS is not None
    return Domain.from_elf(MINIOS, cmdline=cmdline)


def shows(line: str) -> Callable[[Domain], bool]:
    return lambda d: line in d.console.text.splitlines()


def run_until(dom: Domain, line: str) -> None:
    state = dom.run(until=shows(line))
    assert state == D.PAUSED, (state, dom.console.text[-2000:], dom.crash_report)


def local(dom: Domain, path: str) -> str:
    return f"/local/domain/{dom.domid}/{path}"


@pytest.fixture(scope="module")
def tested() -> tuple[Domain, list[tuple[Any, ...]]]:
    """A guest stopped right after its self-test, with every message of its connection recorded."""
    dom = boot()
    messages: list[tuple[Any, ...]] = []

    def hook(conn: Any, kind: str, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None:
        if conn.domid == dom.domid:
            messages.append((kind, msg_type, req_id, tx_id, bytes(payload)))
        return None
    dom.xenstored.message_hooks.append(hook)
    run_until(dom, SELFTEST_DONE)
    dom.xenstored.message_hooks.remove(hook)
    return dom, messages


def test_self_test_passes(tested: tuple[Domain, list[tuple[Any, ...]]]) -> None:
    dom, _ = tested
    lines = dom.console.text.splitlines()
    assert not [ln for ln in lines if "FAILED" in ln]
    assert f"We are domain {dom.domid}, name {dom.name}" in lines
    for check in ("read domid and name", "write and read back", "rm, then read gives ENOENT", "printf 42, scanf",
                  "transaction retried on EAGAIN", "watch with token", "40 requests through 32 ids"):
        assert f"xenbus: {check} ok" in lines, check
    i = lines.index("Read data/flibble...", lines.index("rm data/flibble..."))
    assert lines[i + 1:i + 3] == ["Error in xenbus read: ENOENT", "(Should have said ENOENT)"]
    assert "transaction 1, attempt 1: EAGAIN, retrying" in lines
    assert "transaction 2, attempt 2: committed" in lines


def test_self_test_left_its_marks_in_the_store(tested: tuple[Domain, list[tuple[Any, ...]]]) -> None:
    """What the guest wrote through the ring is what dom0 reads from the store."""
    dom, _ = tested
    store = dom.store
    assert store.read(local(dom, "data/xenbus-test")) == b"passed"
    assert store.read(local(dom, "data/counter")) == b"143"        # 42, +100 behind the tx's back, +1
    assert store.read(local(dom, "data/watched")) == b"1"
    assert not store.exists(local(dom, "data/flibble"))
    assert store.read(local(dom, "control/shutdown")) == b""


def test_request_ids_cycle_and_are_echoed(tested: tuple[Domain, list[tuple[Any, ...]]]) -> None:
    _, messages = tested
    requests = [m for m in messages if m[0] == "request"]
    replies = [m for m in messages if m[0] == "reply"]
    ids = [m[2] for m in requests]
    assert set(ids) == set(range(32))                                # all of 0..31, nothing else
    wraps = [i for i in range(1, len(ids)) if ids[i] < ids[i - 1]]
    assert wraps, "request ids never wrapped"
    assert sorted(m[2] for m in replies) == sorted(ids)              # every reply echoes a request's id
    # The transaction test: a start, a conflicting commit (EAGAIN), a retry that commits.
    pending: dict[int, bool] = {}
    outcomes = []
    for kind, msg_type, req_id, _, payload in messages:
        if kind == "request":
            pending[req_id] = msg_type == W.XS_TRANSACTION_END
        elif kind == "reply" and pending.pop(req_id, False):
            outcomes.append((msg_type, payload))
    assert outcomes == [(W.XS_ERROR, b"EAGAIN\0"), (W.XS_TRANSACTION_END, b"OK\0")]
    watch_events = [m for m in messages if m[0] == "event"]
    assert any(m[4] == b"data/watched\0token-7\0" for m in watch_events)


def test_host_writes_memory_target() -> None:
    dom = boot()
    run_until(dom, SELFTEST_DONE)
    assert "Memory target is 32768 KiB" in dom.console.text.splitlines()
    for kib in (65536, 16384):
        dom.store.write(local(dom, "memory/target"), str(kib))
        run_until(dom, f"New memory target: {kib} KiB")
    assert dom.state == D.PAUSED


@pytest.mark.parametrize("request_, reason, exit_code", [("poweroff", "poweroff", 0), ("reboot", "reboot", 4),
                                                         ("crash", "crash", 3)])
def test_host_requests_shutdown(request_: str, reason: str, exit_code: int) -> None:
    dom = boot()
    run_until(dom, SELFTEST_DONE)
    dom.store.write(local(dom, "control/shutdown"), request_)
    state = dom.run()
    assert dom.shutdown_reason == reason
    assert state == (D.CRASHED if reason == "crash" else D.SHUTDOWN)
    assert SHUTDOWN_EXIT[reason] == exit_code
    code = {"poweroff": 0, "reboot": 1, "crash": 3}[reason]
    assert f"Shutdown requested: {code}" in dom.console.text.splitlines()
    assert dom.store.read(local(dom, "control/shutdown")) == b""     # acknowledged before shutting down
    assert "Periodic thread done" not in dom.console.text            # ticks=0: only the request ends it


@pytest.mark.slow
def test_cli_shutdown_request_over_the_store_socket(tmp_path: Any) -> None:
    """`miniguest boot --store-socket` + `miniguest store write control/shutdown reboot` -> exit 4."""
    sock = str(tmp_path / "xs.sock")
    boot_p = subprocess.Popen([sys.executable, "-m", "miniguest.cli", "boot", "minios", "-c", "ticks=0",
                               "--store-socket", sock, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = [sys.executable, "-m", "miniguest.cli", "store", "--socket", sock]
    try:
        deadline = time.monotonic() + 60
        domid = None
        while time.monotonic() < deadline:
            if os.path.exists(sock):
                r = subprocess.run(store + ["ls", "/local/domain"], capture_output=True, timeout=30)
                ids = [ln.split()[0].rstrip(":=") for ln in r.stdout.decode().splitlines()
                       if ln and not ln.startswith(" ") and ln.split()[0].rstrip(":=").isdigit()]
                domid = next((i for i in ids if i != "0"), None)
                if domid is not None:
                    r = subprocess.run(store + ["read", f"/local/domain/{domid}/data/xenbus-test"],
                                       capture_output=True, timeout=30)
                    if r.returncode == 0 and r.stdout.strip() == b"passed":
                        break
            time.sleep(0.05)
        else:
            pytest.fail("the guest never finished its xenbus self-test")
        r = subprocess.run(store + ["write", f"/local/domain/{domid}/control/shutdown", "reboot"],
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        _, err = boot_p.communicate(timeout=60)
    finally:
        if boot_p.poll() is None:
            boot_p.kill()
            boot_p.communicate()
    assert boot_p.returncode == 4, err.decode()
    assert b"shut down: reboot" in err


def test_xenstore_bench_mode_round_trips():
    """minios `xsbench=N` (used by tools/bench.py) writes and reads back N values through the ring."""
    from miniguest import Domain, samples
    dom = Domain.from_elf(samples.path("minios"), cmdline="xsbench=50")
    dom.run()
    assert dom.shutdown_reason == "poweroff"
    assert "xenstore bench: 50 round trips" in dom.console.text
    assert dom.store.read(f"/local/domain/{dom.domid}/data/bench") == b"49"
    dom.close()
