"""Page-table updates Xen refuses, with Xen's errno for each, and the `done` count of a failed batch."""
from __future__ import annotations

import pytest

from guestlib import SELFTEST, facts

EXPECTED = {
    "map_frame_beyond_ram": "-1",          # EPERM: not RAM (an MMIO mapping)
    "map_xen_frame": "-16",                # EBUSY: a frame owned by Xen
    "map_page_table_writable": "-16",      # EBUSY: a page table may not be writable
    "map_page_table_readonly": "0",
    "read_through_new_mapping": "1",
    "write_xen_l4_slot": "-22",            # EINVAL: L4 slots 256..271 are Xen's
    "pte_in_foreign_frame": "-22",         # EINVAL: the entry is not in one of our frames
    "bad_l1_flags": "-22",                 # EINVAL: PCD is not for an unprivileged guest
    "update_va_mapping_foreign": "-16",
    "batch_rc": "-1",
    "batch_done": "2",
    "batch_mapping_works": "1",
    "foreign_domain": "1",
    "pin_twice": "-22",
    "pin_writable_frame_as_l1": "-22",
    "new_baseptr_same": "0",
    "tlb_flush_local": "0",
    "mmuext_unknown": "-38",
}


@pytest.mark.parametrize("scramble", [False, True])
def test_mmu_update_refusals(boot_guest, scramble):
    run = boot_guest(SELFTEST, cmdline="mmu", scramble_mfns=scramble)
    dom = run.domain
    f = facts(dom.console.text)
    assert dom.shutdown_reason == "poweroff", dom.console.text
    for key, value in EXPECTED.items():
        assert f.get(key) == value, (key, f.get(key))
    assert any("is not owned by d1" in m for m in dom.messages)
    # The trace shows each refusal with its errno and the decoded request (miniguest pytest plugin).
    refused = [r.data for r in run.trace if r.kind == "hypercall" and r.data["name"] == "mmu_update"
               and r.data.get("errno")]
    assert {r["errno"] for r in refused} == {"EPERM", "EBUSY", "EINVAL", "ESRCH"}
    assert all(r["in"]["reqs"] for r in refused)
