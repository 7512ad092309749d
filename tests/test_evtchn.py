"""Event channel operations from inside a guest: interdomain loopback, masking, errnos, the port limit,
EVTCHNOP_reset."""
from __future__ import annotations

from guestlib import SELFTEST, facts


def test_event_channel_operations(boot_guest):
    run = boot_guest(SELFTEST, cmdline="evtchn")
    dom = run.domain
    text = dom.console.text
    f = facts(text)
    assert dom.shutdown_reason == "poweroff", text
    assert "FAIL" not in text
    expected = {"alloc_unbound": "0", "bind_interdomain_self": "0", "status_a": "1", "status_b": "1",
                "pending_while_masked": "1", "no_upcall_while_masked": "0", "upcall_after_unmask": "1",
                "selector_after_unmask": "1", "peer_unbound_after_close": "1", "close_again": "-22",
                "send_closed": "-22", "send_unbound_dropped": "0", "bind_virq_timer": "0",
                "bind_virq_twice": "-17", "bind_global_virq_vcpu1": "-22", "bind_virq_out_of_range": "-22",
                "bind_virq_no_such_vcpu": "-2", "bind_ipi": "0", "bind_vcpu_no_such_vcpu": "-2",
                "status_out_of_range": "-22", "alloc_until_full": "-28", "reset": "0"}
    for key, value in expected.items():
        assert f.get(key) == value, key
    # Ports 1 and 2 were the toolstack's (xenstore, console); the limit is 1023 (xl's default).
    assert f["last_port"] == "1023"
    # EVTCHNOP_reset closes every port, the console's too: the guest can no longer notify dom0.
    assert f["console_port_after_reset"] == "0" and f["send_console_after_reset"] == "-22"
    # The same results, as the trace decodes them: EEXIST for the second VIRQ_TIMER binding.
    virqs = [r.data for r in run.trace if r.kind == "hypercall" and r.data["subop"] == "bind_virq"]
    assert [(v["in"]["virq"], v.get("errno")) for v in virqs[:2]] == [("TIMER", None), ("TIMER", "EEXIST")]
