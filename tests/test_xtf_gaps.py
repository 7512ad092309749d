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
