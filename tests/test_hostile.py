"""A hostile guest (selftest scenario `hostile`) attacks Xen through its page tables the three ways issue 9
found, on the real CPU path, and reports each answer on its console: every attack is refused with Xen's
errno or faults as on Xen, and the domain runs on to a clean poweroff. The page-type audit (conftest.py)
then checks the domain's books."""
from __future__ import annotations

from guestlib import facts, selftest

EBUSY, EINVAL = "-16", "-22"
REFUSED = {
    # 1. a page table mapping itself writable, and one level up (Xen: could_not_pin in get_page_from_l1e)
    "attack1_l1_maps_itself_writable": EBUSY,
    "attack1_l2_whose_l1_maps_it_writable": EBUSY,
    "attack1_then_the_l2": EINVAL,              # the frame already has a writable reference: "Bad type"
    "attack1_map_the_l1_writable": EBUSY,
    # 2. Xen-heap pages as page tables
    **{f"attack2_pin_{what}_l{level}": EINVAL for what in ("shared_info", "grant_frame") for level in (1, 2, 3, 4)},
    "attack2_l2_entry_names_shared_info": EINVAL,
    "attack2_l2_entry_names_grant_frame": EINVAL,
    # Xen's own frames
    "xen_m2p_l3_map": EBUSY,
    "xen_perdomain_l3_map": EBUSY,
    "xen_perdomain_l3_pin": EINVAL,
    # 3. through a read-only linear L4 entry: Xen's per-domain area faults, the M2P is read-only
    "attack3_perdomain_read": "#PF[1]",
    "attack3_perdomain_l2_read": "#PF[1]",
    "attack3_m2p_l3_store": "#PF[3]",
    "attack3_m2p_data_store": "#PF[3]",
    "attack3_own_l4_store": "#PF[3]",
    "attack3_linear_writable": EINVAL,
}
# What Xen lets a PV guest do, and the guest checks it could.
ALLOWED = {
    "attack1_frame_still_plain_memory": "0", "attack1_write_back": "90", "attack1_pin_the_l1_first": "0",
    "shared_info_still_mappable": "0", "attack3_linear_l4_entry": "0", "attack3_linear_reads_own_l4": "1",
    "attack3_m2p_l3_read": "none", "attack3_m2p_l2_read": "none", "attack3_m2p_l2_maps_superpages": "1",
    "attack3_m2p_data_read": "none", "attack3_m2p_data_is_the_m2p": "1", "still_running": "1",
}


def test_hostile_guest_is_refused_and_runs_on():
    dom = selftest("hostile")
    text = dom.console.text
    f = facts(text)
    for name, want in {**REFUSED, **ALLOWED}.items():
        assert f.get(name) == want, (name, f.get(name), text)
    assert "FAIL" not in text and "selftest: 0 failures" in text
    assert dom.state == "shutdown" and dom.shutdown_reason == "poweroff", dom.crash_report
    # Xen says why, once per kind of refusal (the hypervisor's log, not the guest's console).
    assert any("is being validated as L1" in m or "L1 mfn" in m for m in dom.messages), dom.messages
    dom.close()


def test_hostile_guest_with_scrambled_frames():
    # Machine frame numbers unrelated to guest frame numbers change nothing.
    dom = selftest("hostile", scramble_mfns=True)
    assert "selftest: 0 failures" in dom.console.text and dom.shutdown_reason == "poweroff", dom.console.text
    dom.close()

