"""GNTTABOP_copy as Xen's gnttab_copy answers it, seen by the selftest guest (scenario `gntcopy`): copies
by grant reference or (DOMID_SELF only) by frame, per-op statuses with failures that do not stop the
batch, the same permission and range checks as mapping, and the hypercall's own errors."""
from __future__ import annotations

from guestlib import SELFTEST, facts, selftest

GNTST = {"okay": "0", "general_error": "-1", "bad_domain": "-2", "bad_gntref": "-3",
         "permission_denied": "-8", "bad_page": "-9", "bad_copy_arg": "-10"}
EXPECTED = {
    "copy_batch": "0",
    "frame_to_frame": GNTST["okay"], "frame_to_frame_data": "1",
    "gref_to_frame": GNTST["okay"], "gref_to_frame_data": "1",
    "frame_to_gref": GNTST["okay"], "frame_to_gref_data": "1",
    "to_readonly_grant": GNTST["general_error"], "readonly_grant_untouched": "1",
    "from_readonly_grant": GNTST["okay"], "from_readonly_grant_data": "1",
    "to_page_table": GNTST["general_error"],          # no writable type reference on a page table
    "from_page_table": GNTST["okay"],
    "to_page_table_grant": GNTST["general_error"],
    "not_granted": GNTST["general_error"],
    "granted_to_dom0": GNTST["general_error"],
    "ref_past_table": GNTST["bad_gntref"],
    "frame_by_own_id": GNTST["permission_denied"],    # only DOMID_SELF may name a frame
    "unknown_domain": GNTST["bad_domain"],
    "from_dom0": GNTST["general_error"],              # dom0 grants this domain nothing
    "xen_frame": GNTST["bad_page"],
    "past_ram": GNTST["bad_page"],
    "past_page": GNTST["bad_copy_arg"],
    "zero_length": GNTST["okay"],                     # nothing to do: nothing checked
    "grant_flags_after": "1",
    "table_still_pinned_l1": "-22",
    "copy_unmapped_array": "-14", "copy_negative_count": "-22", "copy_opaque_bits": "-22",
}


def test_grant_copy_statuses():
    dom = selftest("gntcopy")
    text = dom.console.text
    f = facts(text)
    for name, want in EXPECTED.items():
        assert f.get(name) == want, (name, f.get(name), text)
    assert "selftest: 0 failures" in text and dom.shutdown_reason == "poweroff"
    assert any("grant copy refused" in m for m in dom.messages)
    dom.close()


def test_grant_copy_in_the_trace(boot_guest):
    # The trace shows each op (by grant or by frame) and the status each one got.
    run = boot_guest(SELFTEST, cmdline="gntcopy")
    copies = [r.data for r in run.trace if r.kind == "hypercall" and r.data["name"] == "grant_table_op"
              and r.data.get("subop") == "copy"]
    batch = copies[0]
    assert batch["result"] == 0 and batch["in"]["count"] == 18
    assert batch["in"]["ops"][1]["source"] == {"dom": "DOMID_SELF", "offset": 32, "ref": 1}
    assert batch["out"]["status"] == [0, 0, 0, -1, 0, -1, 0, -1, -1, -1, -3, -8, -2, -1, -9, -9, -10, 0]
    assert copies[1]["result"] == -14 and copies[1]["in"] == {"fault": 0x7FF000000000}
