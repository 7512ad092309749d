"""The start-of-day contract (DESIGN.md, xen.h), read back by the selftest guest from inside the domain."""
from __future__ import annotations

import pytest

from guestlib import SELFTEST, facts

PAGE = 4096


@pytest.mark.parametrize("scramble", [False, True])
def test_start_info_and_layout(boot_guest, scramble):
    dom = boot_guest(SELFTEST, cmdline="layout", scramble_mfns=scramble, poison_memory=True,
                     module=b"M" * 5000).domain
    f = facts(dom.console.text)
    assert dom.shutdown_reason == "poweroff", dom.console.text
    assert "FAIL" not in dom.console.text
    lay = dom.layout
    h = lambda key: int(f[key], 16)  # noqa: E731
    assert f["magic"] == "xen-3.0-x86_64"
    assert int(f["nr_pages"]) == dom.nr_pages == 32 * 256
    assert h("shared_info") == dom.xen.shared_info_mfn * PAGE
    assert h("flags") == 0
    assert h("store_mfn") == dom.p2m[lay.pfn(lay.xenstore)]
    assert h("console_mfn") == dom.p2m[lay.pfn(lay.console)]
    assert (int(f["store_evtchn"]), int(f["console_evtchn"])) == (1, 2)
    assert h("pt_base") == lay.pt_base and int(f["nr_pt_frames"]) == lay.nr_pt_frames == 5
    assert h("mfn_list") == lay.p2m_start and h("first_p2m_pfn") == lay.pfn(lay.p2m_start)
    assert int(f["nr_p2m_frames"]) == 32 * 256 * 8 // PAGE
    assert h("mod_start") == lay.mod_start and int(f["mod_len"]) == 5000
    assert f["cmd_line"] == "layout"
    # The order of start-of-day elements, page-aligned and packed (xen.h).
    kernel_end = int(f["kernel"].split("-")[1], 16)
    assert kernel_end == lay.mod_start
    assert lay.mod_start + 2 * PAGE == lay.p2m_start
    assert lay.p2m_start + 16 * PAGE == h("start_info_va") == lay.start_info
    assert lay.start_info + PAGE == lay.xenstore and lay.xenstore + PAGE == lay.console
    assert lay.console + PAGE == lay.pt_base
    assert h("entry_rsp") == lay.pt_base + 5 * PAGE + PAGE        # top of the boot stack after the tables
    # 1:1 mapping to a 4 MiB boundary at least 512 KiB past the boot stack.
    mapped_end = h("mapped_end")
    assert mapped_end % (4 << 20) == 0 and mapped_end >= h("entry_rsp") + 512 * 1024
    identity = int(f["identity_frames"])
    if scramble:
        assert identity < 100          # a permutation: almost no frame keeps its number
    else:
        assert identity == dom.nr_pages
    assert f["bss_zero"] == "1"        # RAM was poisoned with 0xA5: the builder zeroed the BSS


def test_scrambled_mfns_are_a_permutation(boot_guest):
    dom = boot_guest(SELFTEST, cmdline="layout", scramble_mfns=True).domain
    assert sorted(dom.p2m) == list(range(dom.nr_pages)) and list(dom.p2m) != sorted(dom.p2m)
