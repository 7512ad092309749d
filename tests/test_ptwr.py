"""Writable page tables (Xen's ro-page-fault.c): the selftest guest (scenario `ptwr`) stores straight into a
live L1 table through its read-only mapping with each instruction form Linux and other PV kernels use; with
VMASST_TYPE_writable_pagetables Xen emulates the store (validating the new entry as mmu_update does), else or
when the entry is refused the guest gets its #PF back with the entry unchanged. Each read-modify-write form
is also run natively on an ordinary page and must leave the same value, registers and flags."""
from __future__ import annotations

import re

from guestlib import SELFTEST, facts

EMULATED = ["mov64", "mov32", "mov_no_ad", "mov_imm", "xchg", "xchg_back", "cmpxchg", "cmpxchg_mismatch",
            "cmpxchg8b", "cmpxchg8b_mismatch", "cmpxchg16b_mismatch", "lock_andb", "lock_orq", "lock_btr",
            "lock_bts_reg", "lock_xorq", "lock_addq", "lock_subq", "lock_btc_next_entry", "lock_btc_back"]
BOUNCED = ["no_assist_store", "mov32_read_only", "cmpxchg16b_match", "refused_xen_frame", "refused_table_writable",
           "refused_l4_writable", "refused_pcd", "refused_past_ram", "refused_xen_frame_by_or", "refused_misaligned",
           "store_to_plain_read_only"]
SAME_AS_CPU = ["cpu_mov64", "cpu_xchg", "cpu_cmpxchg_hit", "cpu_cmpxchg_miss", "cpu_cmpxchg8b_hit",
               "cpu_cmpxchg8b_miss", "cpu_andb", "cpu_orq", "cpu_xorq", "cpu_addq", "cpu_subq", "cpu_btr",
               "cpu_bts_reg", "cpu_btc_reg", "cpu_movimm"]


def test_writable_page_tables(boot_guest):
    run = boot_guest(SELFTEST, cmdline="ptwr")
    dom = run.domain
    text = dom.console.text
    f = facts(text)
    for name in EMULATED:
        assert f.get(name) == "emulated", (name, text)
    for name in BOUNCED:
        assert f.get(name) == "#PF", (name, text)
    for name in SAME_AS_CPU:
        assert f.get(name) == "same", (name, text)
    assert re.search(r"^mov64_maps = 17 ok$", text, re.M) and re.search(r"^cpu_sets_ad = 96 ok$", text, re.M)
    assert "FAIL" not in text and "selftest: 0 failures" in text and dom.shutdown_reason == "poweroff"
    # Every emulated store is a `ptwr` record; every bounced one an exception record for #PF with the write bit.
    stores = [r.data for r in run.trace if r.kind == "ptwr"]
    assert len(stores) >= len(EMULATED) + len(SAME_AS_CPU) and all(len(bytes.fromhex(s["insn"])) >= 2 for s in stores)
    faults = [r.data for r in run.trace if r.kind == "exception" and r.data["vector"] == 14]
    assert len(faults) >= len(BOUNCED) and all(p["error_code"] & 2 for p in faults)
    # Xen says why a store was not emulated (the hypervisor's log).
    assert any("not emulated" in m and "refused" in m for m in dom.messages), dom.messages
    assert any("cmpxchg16b" in m for m in dom.messages)
