"""ABI details the Xen Test Framework's pv64 tests rely on, found by running XTF under miniguest and checked
here with our own selftest guest (scenario `xtfgaps`), against what Xen does."""
from __future__ import annotations

import pytest

from guestlib import facts, selftest


@pytest.fixture(scope="module")
def xtfgaps():
    dom = selftest("xtfgaps")
    yield dom, dom.console.text, facts(dom.console.text)
    dom.close()


def test_runs_to_the_end(xtfgaps):
    dom, text, _ = xtfgaps
    assert dom.shutdown_reason == "poweroff", text
    assert "FAIL" not in text and "selftest: 0 failures" in text


def test_gnttab_set_version(xtfgaps):
    # Xen's gnttab_set_version: 1 and 2 are the only versions (-EINVAL otherwise); v2 on a table limited to
    # v1 is -ENOSYS, "as before set_version was introduced", which XTF's xtf_init_grant_table(2) expects.
    _, _, f = xtfgaps
    assert (f["gnttab_set_version_1"], f["gnttab_version_after_1"]) == ("0", "1")
    assert (f["gnttab_set_version_2"], f["gnttab_version_after_2"]) == ("-38", "1")
    assert f["gnttab_set_version_3"] == "-22"


def test_cr4_write_never_faults(xtfgaps):
    # Xen's pv_fixup_guest_cr4: uncontrollable bits are dropped silently, DE is the guest's.
    _, _, f = xtfgaps
    assert f["cr4_de_set"] == "1" and f["cr4_fsgsbase_dropped"] == "0"
    assert f["cr4_rest_kept"] == f["cr4_foreign_bits_dropped"] == str(0x6A0)


def test_no_fsgsbase_in_cpuid(xtfgaps):
    _, _, f = xtfgaps
    assert f["cpuid7_fsgsbase"] == "0"


def test_debug_registers_emulated(xtfgaps):
    # Xen emulates mov to/from %drN for a PV kernel (XTF's xsa-213 keeps %rsp in %dr0).
    _, _, f = xtfgaps
    assert f["dr0_readback"] == str(0x12345678)
    assert (f["dr6_default"], f["dr7_default"]) == (str(0xFFFF0FF0), str(0x400))


def test_iret_ends_a_multicall(xtfgaps):
    # XSA-213: the iret is performed, the multicall returns its result (the restored rax), nothing after runs.
    _, _, f = xtfgaps
    assert f["multicall_iret_rc"] == f["multicall_iret_result"] == str(0x1E7)
    assert f["multicall_after_iret_not_run"] == str(0x5A5A)


# -- round 2: scenario `xtfgaps2` ------------------------------------------------------------------------
GP0 = str(13 << 16)
NO_FAULT = "-1"


@pytest.fixture(scope="module")
def xtfgaps2():
    dom = selftest("xtfgaps2")
    yield dom, dom.console.text, facts(dom.console.text)
    dom.close()


def test_round2_runs_to_the_end(xtfgaps2):
    dom, text, _ = xtfgaps2
    assert dom.shutdown_reason == "poweroff", text
    assert "FAIL" not in text and "selftest: 0 failures" in text


def test_physdev_set_iopl(xtfgaps2):
    # XTF pv-iopl (hypercall): Xen's virtual IOPL. PHYSDEVOP_set_iopl takes 0-3 (-EINVAL above); the guest
    # kernel counts as CPL 1 and user mode as CPL 3 (iopl_ok() in emul-priv-op.c). With enough IOPL, cli/sti
    # complete as no-ops and I/O reaches no device (`in` reads all ones); without it, #GP(0).
    _, _, f = xtfgaps2
    assert f["set_iopl_4"] == "-22"
    assert f["iopl0_kernel_cli"] == f["iopl0_kernel_outb"] == f["iopl0_user_sti"] == GP0
    assert f["iopl1_kernel_cli"] == f["iopl1_kernel_sti"] == f["iopl1_kernel_outb"] == NO_FAULT
    assert f["iopl1_kernel_inb"] == str(0x12FF)
    assert f["iopl1_user_cli"] == f["iopl1_user_outb"] == GP0
    assert f["iopl3_user_cli"] == NO_FAULT and f["iopl3_user_inb"] == str(0x12FF)
    assert f["frame_iopl_hidden"] == "0"


def test_architectural_iopl(xtfgaps2):
    # XTF pv-iopl (vmassist): with VMASST_TYPE_architectural_iopl the kernel is CPL 0, HYPERVISOR_iret loads
    # the virtual IOPL from its frame and create_bounce_frame folds it into the frames it writes.
    _, _, f = xtfgaps2
    assert f["vm_assist_architectural_iopl"] == "0"
    assert f["arch_iopl0_kernel_cli"] == NO_FAULT and f["arch_iopl0_user_cli"] == GP0
    assert f["arch_iopl3_user_cli"] == NO_FAULT and f["arch_frame_iopl"] == "3"
    assert f["arch_iopl_back_to_0"] == NO_FAULT and f["arch_frame_iopl_0"] == "0"


def test_linear_pagetable_self_map(xtfgaps2):
    # XTF xsa-182: Xen lets an L4 entry map its own L4 read-only (get_l4_linear_pagetable); the guest reads
    # its tables through it. Write permission on such an entry is refused, fast path or not (XSA-182).
    _, _, f = xtfgaps2
    assert f["linear_l4_self_map"] == "0" and f["linear_reads_own_l4"] == "1"
    assert f["linear_l4_self_map_rw"] == "-22" and f["linear_still_read_only"] == "0"
    assert f["linear_l4_unmap"] == "0"


def test_linear_pagetable_references():
    # A read-only Ln entry naming another validated Ln table holds a type reference on it; a self map holds
    # none; XSA-240: a table holding linear entries cannot itself become a linear target (no cycles).
    from miniguest.hypervisor.ram import MachineMemory
    from miniguest.hypervisor.x86.page_types import PGT_l4, FrameTable, PageTypeError, audit
    frames = FrameTable(MachineMemory(8))
    frames.assign_range(0, 8, 1)
    a, b, c = 2, 3, 4

    def linear():
        return {m: v for m, v in enumerate(frames.linear.tolist()) if v}
    frames.pin(b, PGT_l4, 1)                                  # an empty L4 validates
    frames.mem.write_u64(a << 12, (b << 12) | 0x23)          # A[0] -> B writable: refused
    with pytest.raises(PageTypeError):
        frames.pin(a, PGT_l4, 1)
    assert frames.count[b] == 1 and not linear()
    frames.mem.write_u64(a << 12, (b << 12) | 0x21)          # A[0] -> B read-only, A[1] -> A
    frames.mem.write_u64((a << 12) + 8, (a << 12) | 0x21)
    frames.pin(a, PGT_l4, 1)
    assert frames.count[b] == 2 and frames.count[a] == 1
    assert linear() == {a: 1, b: -1}
    assert not audit(frames, 1, [(a, PGT_l4), (b, PGT_l4)])
    frames.mem.write_u64(c << 12, (a << 12) | 0x21)          # C[0] -> A, which holds linear entries
    with pytest.raises(PageTypeError):
        frames.pin(c, PGT_l4, 1)
    frames.unpin(a, 1)
    assert frames.count[b] == 1 and not linear()
    frames.mem.write_u64(a << 12, 0)
    frames.pin(a, PGT_l4, 1)
    assert not linear()
    assert not audit(frames, 1, [(a, PGT_l4), (b, PGT_l4)])


def test_cpuid_faulting(xtfgaps2):
    # XTF cpuid-faulting: Xen offers CPUID faulting to a PV guest when the CPU has it (MSR_PLATFORM_INFO
    # bit 31); MSR_MISC_FEATURES_ENABLES bit 0 switches it (other bits reserved: #GP). While on, cpuid
    # from guest user mode takes #GP(0), also behind the forced-emulation prefix (Xen's
    # emulate_forced_invocation reports it at the cpuid); the guest kernel is never affected.
    _, _, f = xtfgaps2
    assert f["platform_info_cpuid_faulting"] == "1" and f["misc_features_default"] == "0"
    assert f["user_cpuid_no_faulting"] == NO_FAULT and f["misc_features_cpuid_faulting"] == "1"
    assert f["kernel_cpuid_faulting_on"] == f["kernel_fep_cpuid_faulting_on"] == NO_FAULT
    assert f["user_cpuid_faults"] == f["user_fep_cpuid_faults"] == GP0
    assert f["user_cpuid_fault_rip"] == f["user_fep_cpuid_fault_rip"] == "1"
    assert f["misc_features_reserved_bit"] == GP0 and f["user_cpuid_faulting_off"] == NO_FAULT


def test_sysenter(xtfgaps2):
    # XTF xsa-339: SYSENTER from a 64-bit PV guest on an Intel CPU enters Xen's sysenter_entry, which
    # records rip 0, a null cs with RPL 3, rsp 0 and FLAT_USER_SS and bounces to the sysenter callback
    # (registers as SYSEXIT leaves them), or as #GP(0) to the #GP handler when none is registered. Unicorn
    # alone executes it as a no-op.
    _, _, f = xtfgaps2
    assert f["sysenter_no_callback_gp"] == GP0 and f["sysenter_gp_frame"] == "1"
    assert f["sysenter_to_callback"] == NO_FAULT and f["sysenter_callback_entered"] == "1"
    assert (f["sysenter_frame_rip"], f["sysenter_frame_cs"], f["sysenter_frame_rsp"]) == ("0", "3", "0")
    assert f["sysenter_frame_ss"] == str(0xE02B) and f["sysenter_rcx_kept"] == "1"


def test_noncanonical_stack_access_is_ss(xtfgaps2):
    # XTF memop-seg: a non-canonical address through SS (rsp/rbp-based operand without an fs/gs override, or
    # push/pop on a non-canonical rsp) is #SS(0) on the CPU; other segments give #GP(0). Unicorn reports
    # #GP(0) for all of them, miniguest tells them apart before bouncing the fault.
    _, _, f = xtfgaps2
    ss0 = str(12 << 16)
    assert f["noncanon_rbp_kernel"] == f["noncanon_rbp_user"] == f["noncanon_rbp_index_user"] == ss0
    assert f["noncanon_push_user"] == ss0
    assert f["noncanon_fs_rbp_user"] == f["noncanon_rax_user"] == GP0


def test_sysctl_domctl_refused(xtfgaps2):
    # XTF livepatch-priv-check (and xtf_probe_*_interface_version): Xen's do_sysctl/do_domctl answer a domU
    # -EACCES for an interface version other than theirs (4.19: sysctl 0x15, domctl 0x17), then XSM's
    # -EPERM; a domctl naming a domain that does not exist is -ESRCH first. Not -ENOSYS.
    _, _, f = xtfgaps2
    assert f["sysctl_wrong_version"] == f["domctl_wrong_version"] == "-13"
    assert f["sysctl_denied"] == f["domctl_createdomain_denied"] == f["domctl_dom0_denied"] == "-1"
    assert f["domctl_no_such_domain"] == "-3"


def test_grant_mapping(xtfgaps2):
    # XTF xsa-224/227/234/316: GNTTABOP_map_grant_ref / unmap_grant_ref / unmap_and_replace on the grants a
    # domain gives itself, with Xen's statuses: DOMID_SELF is no domain to map from (bad_domain), dom0
    # grants us nothing (general_error), no map kind or a ref out of range is bad_gntref, a stale handle
    # bad_handle, a wrong bus address bad_dev_addr, a PTE address that is misaligned or not in an L1
    # general_error (XSA-227). GTF_reading/GTF_writing follow the live mappings.
    _, _, f = xtfgaps2
    assert f["gnt_map_domid_self"] == "-2" and f["gnt_map_dom0"] == "-1"
    assert f["gnt_map_no_kind"] == f["gnt_map_bad_ref"] == "-3"
    assert f["gnt_map_rw"] == "0" and f["gnt_map_reads_frame"] == str(0x5A)
    assert (f["gnt_entry_flags_rw"], f["gnt_entry_flags_ro"], f["gnt_entry_flags_idle"]) == ("25", "9", "1")
    assert f["gnt_map_ro_dev"] == "0" and f["gnt_unmap_wrong_addr"] == "-1"
    assert f["gnt_unmap_bad_bus"] == "-6" and f["gnt_unmap_stale_handle"] == "-4"
    assert f["gnt_map_pte_misaligned"] == f["gnt_map_pte_not_l1"] == "-1"


def test_grant_mapping_references(xtfgaps2):
    # A writable grant mapping holds a writable type reference (the frame cannot be pinned as a page
    # table, XSA-224); the reference belongs to the PTE, so when unmap_and_replace moves the PTE (XSA-234)
    # the mapping is unmapped where it now is, not where it was. Afterwards the books balance.
    from miniguest.hypervisor.x86.page_types import audit_domain
    dom, _, f = xtfgaps2
    assert f["gnt_rw_blocks_pin_l1"] == "-22"
    assert f["gnt_unmap_and_replace"] == "0" and f["gnt_moved_mapping_reads"] == str(0x5A)
    assert f["gnt_unmap_where_it_was"] == "-1" and f["gnt_unmap_where_it_is"] == "0"
    assert f["gnt_unmapped_pin_l1"] == f["gnt_unpin"] == "0"
    assert not any(dom.grants.maptrack)
    assert not audit_domain(dom)


def test_no_snapshot_with_grants_mapped():
    # The maptrack is not carried by snapshots: a domain with a grant mapped refuses to be captured.
    from miniguest import Domain
    from miniguest.hypervisor.common.grant_table import GNTMAP_host_map, GrantMap
    from miniguest.regress.snapshot import Snapshot, SnapshotError
    from guestlib import SELFTEST
    dom = Domain.from_elf(SELFTEST, cmdline="layout")
    dom.run()
    dom.grants.maptrack.append(GrantMap(8, GNTMAP_host_map, dom.p2m[0]))
    with pytest.raises(SnapshotError, match="grants mapped"):
        Snapshot.capture(dom)
    dom.close()


def test_user_syscall(xtfgaps2):
    # Xen's switch_to_kernel: a `syscall` from guest user mode with no syscall callback registered is a #UD
    # at the instruction (ca6fcf4321b3, "Inject #UD for missing SYSCALL callbacks"), not a domain crash;
    # the callback is entered with DF clear (the PV ABI's SYSCALL_MASK), the user's rflags in r11.
    _, _, f = xtfgaps2
    assert f["syscall_no_callback_ud"] == str(6 << 16) and f["syscall_ud_rip"] == "1"
    assert f["syscall_to_callback"] == NO_FAULT and f["syscall_callback_entered"] == "1"
    assert f["syscall_callback_df_clear"] == "0" and f["syscall_user_df_in_r11"] == "1"
