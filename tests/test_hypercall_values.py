"""What the informational hypercalls hand out, vm_assist, the M2P update, scheduler calls that return."""
from __future__ import annotations

import uuid

from guestlib import SELFTEST, facts


def test_hypercall_values(boot_guest):
    dom = boot_guest(SELFTEST, cmdline="hypercalls").domain
    text = dom.console.text
    f = facts(text)
    assert dom.shutdown_reason == "poweroff", text
    assert "FAIL" not in text
    assert f["version"] == "40013" and f["extraversion"] == ".0-miniguest"
    assert f["caps"] == "xen-3.0-x86_64" and f["virt_start"] == "ffff800000000000"
    assert "compiler = miniguest (Python)" in text
    assert int(f["features0"], 16) == (1 << 5) | (1 << 6) | (1 << 7) and f["features7"] == "0"
    assert f["handle"] == uuid.UUID(dom.uuid).bytes[:4].hex()
    assert f["commandline_denied"] == "-1"
    assert int(f["maximum_ram_page"]) == dom.mem.nr_frames
    for key in ("current_reservation", "maximum_reservation"):
        assert f[key] == str(dom.nr_pages)
    assert f["reservation_other_domain"] == "-3"
    assert f["memory_map_entries"] == "1" and f["memory_map_ram"] == "1"
    assert (f["vm_assist_bad_type"], f["vm_assist_bad_cmd"]) == ("-22", "-38")
    assert f["m2p_reads_new_value"] == str(0x12345) and f["machphys_update_foreign"] == "-22"
    assert f["sched_yield"] == "0" and f["sched_unknown"] == "-38"
    assert f["vcpu_is_up"] == "1" and f["vcpu_op_no_vcpu"] == "-2"


def test_watchdog_and_suspend_end_states(boot_guest):
    dom = boot_guest(SELFTEST, cmdline="watchdog").domain
    assert (dom.state, dom.shutdown_reason) == ("shutdown", "watchdog")
    assert dom.clock.now_ns() >= 2_000_000_000            # it fired at 2 s of virtual time
    assert "watchdog timer expired" in dom.messages
    dom = boot_guest(SELFTEST, cmdline="suspend").domain
    assert (dom.state, dom.shutdown_reason) == ("shutdown", "suspend")
