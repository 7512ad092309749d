"""What Linux 6.1 needs from the CPU and hypervisor early in boot, answered as Xen 4.17+ answers a PV domU:
the PV CPUID policy (only the features cpufeatureset.h marks 'A'), XSAVE with an emulated xsetbv, the
MSRs Linux reads and writes, set/get_debugreg, xenpmu_op, PHYSDEVOP_pirq_eoi_gmfn_v2 and
VCPUOP_register_vcpu_time_memory_area. The linuxabi test guest checks them from inside."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniguest.abi.cpufeatureset import DEPS, FEATURES
from miniguest.hypervisor.unicorn_x86 import read_xcr0
from miniguest.hypervisor.x86 import cpuid as C

from guestlib import GUESTS, boot, facts

from miniguest.regress.snapshot import Snapshot

LINUXABI = os.path.join(GUESTS, "linuxabi.elf")


def run(scenario: str):
    dom = boot(LINUXABI, cmdline=scenario)
    text = dom.console.text
    dom.close()
    assert dom.shutdown_reason == "poweroff", text
    assert "FAIL" not in text and "linuxabi: all ok" in text, text
    return facts(text)


def test_xsave_and_cpuid_from_the_guest():
    f = run("xsave")
    # Hidden from PV: PSE(3) PSE36(17) PGE(13) MTRR(12) VME(1); offered: FPU, TSC, PAE, CX8, SSE2...
    edx = int(f["leaf1_edx"], 16)
    assert edx & ((1 << 3) | (1 << 17) | (1 << 13) | (1 << 12) | (1 << 1)) == 0
    assert edx & ((1 << 0) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 26)) == (1 << 0) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 26)
    assert int(f["cr4"], 16) == 0x6A0 and int(f["cr4_after"], 16) == 0x406A0   # PGE stays Xen's, OSXSAVE kept


def test_hypercalls_and_msrs_from_the_guest():
    f = run("hcalls")
    assert f["xenpmu_op"] == "-95" and f["pirq_eoi_gmfn_v2_again"] == "-16"


def test_policy_offers_only_all_guest_features():
    fs = C.to_featureset(C.pv_policy())
    offered = {name for name, (index, _) in FEATURES.items() if fs >> index & 1}
    not_pv = {name for name in offered if not any(ch in FEATURES[name][1] for ch in "Aa")}
    assert not_pv == set(), not_pv          # X2APIC, say, is tolerated in max but not in the default policy
    for hidden in ("PSE", "PSE36", "PGE", "MTRR", "VME", "SMEP", "X2APIC", "MONITOR", "VMX", "RDRAND", "FSGSBASE"):
        assert hidden not in offered
    for shown in ("FPU", "TSC", "PAE", "CX8", "SSE2", "XSAVE", "LM", "NX", "SYSCALL", "HYPERVISOR"):
        assert shown in offered


def test_hypervisor_leaves_and_out_of_range():
    dom = boot(LINUXABI, cmdline="xsave")
    v = dom.vcpus[0]
    try:
        a, b, c, d = C.guest_cpuid(v, 0x40000000, 0)
        assert a == 0x40000005 and (b, c, d) == (0x566E6558, 0x65584D4D, 0x4D4D566E)
        assert C.guest_cpuid(v, 0x40000006, 0) == (0, 0, 0, 0)
        assert C.guest_cpuid(v, 0x10A, 0) == (0, 0, 0, 0)       # MSR data is not a CPUID leaf
        assert C.guest_cpuid(v, 0x80000000, 0)[1:] == (0, 0, 0)  # Intel: no vendor string in 0x80000000
        assert C.guest_cpuid(v, 0x80000009, 0) == (0, 0, 0, 0)
        assert C.guest_cpuid(v, 7, 3) == (0, 0, 0, 0)
        assert C.guest_cpuid(v, 1, 0)[1] >> 24 == 0              # no APIC id for PV
    finally:
        dom.close()


NAMES = sorted(FEATURES)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(NAMES), max_size=40))
def test_sanitise_never_leaves_a_dependant_without_its_prerequisite(names):
    fs = 0
    for n in names:
        fs |= 1 << FEATURES[n][0]
    out = C.sanitise(fs)
    assert out & ~fs == 0
    for feature, dependants in DEPS.items():
        if feature in FEATURES and not out >> FEATURES[feature][0] & 1:
            for d in dependants:
                if d in FEATURES:
                    assert not out >> FEATURES[d][0] & 1, (feature, d)


def test_xcr0_tsc_aux_and_time_area_survive_a_snapshot():
    from miniguest import Domain

    class PauseAtTimeArea:
        def before(self, vcpu, nr, args):
            pass

        def after(self, vcpu, nr, args, result):
            if nr == 24 and args[0] == 13:              # vcpu_op(register_vcpu_time_memory_area)
                vcpu.domain.pause()

    dom = Domain.from_elf(LINUXABI, cmdline="hcalls")
    dom.hypercall_observers.append(PauseAtTimeArea())
    assert dom.run() == "paused"
    v = dom.vcpus[0]
    assert v.time_info_guest and dom.pirq_eoi_mfn is not None
    v.tsc_aux = 7
    from miniguest.hypervisor.x86.xstate import handle_xsetbv
    assert handle_xsetbv(v, 0, 1)
    snap = Snapshot.from_bytes(Snapshot.capture(dom).to_bytes())
    r = snap.restore()
    rv = r.vcpus[0]
    assert (rv.xcr0, rv.tsc_aux, rv.time_info_guest) == (1, 7, v.time_info_guest)
    assert read_xcr0(rv.uc) == 1 and r.pirq_eoi_mfn == dom.pirq_eoi_mfn
    dom.close()
    r.close()


@pytest.mark.parametrize("value", [2, 4, 7, 1 << 5])
def test_xsetbv_refuses_what_xen_refuses(value):
    dom = boot(LINUXABI, cmdline="xsave")
    from miniguest.hypervisor.x86.xstate import handle_xsetbv
    try:
        assert not handle_xsetbv(dom.vcpus[0], 0, value)
        assert handle_xsetbv(dom.vcpus[0], 0, 3)
    finally:
        dom.close()


def test_guest_breakpoints_fire_as_on_hardware():
    """DR0-3 with DR7 (set by `mov %drN` and by set_debugreg): a write breakpoint traps after the store with
    B0 in %dr6, a read/write one fires on a load (B1), an instruction breakpoint faults before the
    instruction and lets the return to it run (B2); disabled ones are silent; an I/O breakpoint without
    CR4.DE is -EPERM."""
    f = run("dbreg")
    assert (f["write_bp_fired"], f["rw_bp_fired_on_read"], f["exec_bp_fired"], f["all_off_silent"]) == \
        ("1", "2", "3", "3")
    assert (f["write_bp_dr6_b0"], f["rw_bp_dr6_b1"], f["exec_bp_dr6_b2"]) == ("1", "2", "4")


def test_armed_breakpoints_survive_a_snapshot():
    from miniguest import Domain

    class PauseAtDr7:
        def before(self, vcpu, nr, args):
            pass

        def after(self, vcpu, nr, args, result):
            if nr == 8 and args[0] == 7 and args[1] & 0xFF:        # set_debugreg(7, active)
                vcpu.domain.pause()

    dom = Domain.from_elf(LINUXABI, cmdline="dbreg")
    dom.hypercall_observers.append(PauseAtDr7())
    assert dom.run() == "paused"
    snap = Snapshot.from_bytes(Snapshot.capture(dom).to_bytes())
    dom.hypercall_observers.clear()
    assert dom.run() == "shutdown"
    r = snap.restore()
    r.run()
    try:
        assert r.console.text == dom.console.text and "linuxabi: all ok" in r.console.text
    finally:
        dom.close()
        r.close()
