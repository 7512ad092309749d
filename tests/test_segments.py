"""multicall results, set_segment_base, update_descriptor and set_gdt with a selector from the guest's own
GDT, fpu_taskswitch as CR0.TS -- from inside a guest."""
from __future__ import annotations

from guestlib import facts, selftest


def test_segments_multicall_descriptors_fpu():
    dom = selftest("segments")
    text = dom.console.text
    f = facts(text)
    assert dom.shutdown_reason == "poweroff", text
    assert "FAIL" not in text
    assert (f["multicall_result1"], f["multicall_result2"]) == ("-38", "4096")
    assert f["fs_access"] == str(0x1234ABCD) and f["gs_base_msr"] == str(0x5000)
    assert f["shadow_gs_msr"] == str(0x6000) and f["set_fs_noncanonical"] == "-22"
    assert f["descriptor_dpl_forced_3"] == "3" and f["update_descriptor_tss"] == "-22"
    assert f["set_gdt"] == "0" and f["load_own_selector"] == str((5 << 3) | 3)
    assert f["set_gdt_too_many"] == "-22"
    assert (f["cr0_ts_set"], f["cr0_ts_clear"]) == ("1", "0")
    dom.close()
