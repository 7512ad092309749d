"""Hostile hypercall arguments: bad pointers get -EFAULT, unknown hypercalls and sub-ops -ENOSYS (logged
once), and the guest keeps running."""
from __future__ import annotations

from guestlib import SELFTEST, facts


def test_bad_pointers_and_unknown_calls(boot_guest):
    run = boot_guest(SELFTEST, cmdline="badptr")
    dom = run.domain
    text = dom.console.text
    f = facts(text)
    assert dom.shutdown_reason == "poweroff", text
    assert "FAIL" not in text
    for key in ("console_io_write_unmapped", "console_io_write_noncanonical", "console_io_write_hole",
                "console_io_write_huge", "xen_version_extraversion_unmapped", "xen_version_capabilities_hole",
                "xen_version_compile_info_readonly", "xen_version_get_features_unmapped",
                "memory_op_memory_map_unmapped", "memory_op_current_reservation_unmapped",
                "event_channel_op_unmapped", "sched_op_shutdown_unmapped", "set_trap_table_unmapped",
                "mmu_update_unmapped", "mmuext_op_unmapped", "multicall_unmapped", "callback_op_unmapped",
                "vcpu_op_unmapped", "grant_table_op_unmapped"):
        assert f[key] == "-14", key
    for key in ("xen_version_unknown", "memory_op_unknown", "hypercall_unknown_60", "hypercall_unknown_127"):
        assert f[key] == "-38", key
    assert f["still_alive"] == "1"
    assert "unknown hypercall 60 (?): -ENOSYS" in dom.messages
    assert "xen_version: unknown sub-op 16962: -ENOSYS" in dom.messages
    # Tracing reads the same bad pointers: the decoders record the fault instead of failing.
    efault = [r.data for r in run.trace if r.kind == "hypercall" and r.data.get("errno") == "EFAULT"]
    assert len(efault) >= 19 and any("fault" in r.get("in", {}) for r in efault)
