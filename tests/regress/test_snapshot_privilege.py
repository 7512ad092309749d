"""Snapshots must not grant privilege (issue 9): a forged file is refused with one line, whatever field it
forges -- registers Xen would not accept as a vCPU context, page-type state, Xen's own frames, callbacks
and trap table, IOPL and vm_assist, event channels, grants, the xenstore tree and connection -- and no
domain is left behind. One test per class of forged field; the genuine file restores (the control)."""
from __future__ import annotations

import array
import json
import struct

import pytest
from regresslib import MINIOS, SELFTEST, PauseAfter, traced

from miniguest.cli.main import main
from miniguest.hypervisor.host import Host
from miniguest.hypervisor.x86.page_types import PGC_xen_heap, PGT_l1, PGT_validated
from miniguest.hypervisor.x86.vcpu_context import GuestContext, check_guest_context, check_live
from miniguest.regress.snapfile import SnapshotError
from miniguest.regress.snapshot import Snapshot


def stopped(path: str, n: int, **options):
    dom, _ = traced(path, **options)
    dom.hypercall_observers.append(PauseAfter(n))
    assert dom.run() == "paused"
    return dom


@pytest.fixture(scope="module")
def minios():
    """Mini-OS stopped after 60 hypercalls: callbacks, a trap table, event channels and xenstore state."""
    dom = stopped(MINIOS, 60)
    yield dom
    dom.close()


@pytest.fixture(scope="module")
def usermode():
    """The selftest stopped in guest user mode (a user page table, the user CS)."""
    dom = stopped(SELFTEST, 15, cmdline="usermode")
    assert not dom.vcpus[0].kernel_mode
    yield dom
    dom.close()


@pytest.fixture(scope="module")
def segments():
    """The selftest stopped with a GDT frame of its own set (set_gdt)."""
    dom = stopped(SELFTEST, 53, cmdline="segments")
    assert dom.vcpus[0].gdt_frames
    yield dom
    dom.close()


def forged(dom, change=None, frames=None, memory=None) -> Snapshot:
    """A snapshot of `dom` whose header went through change(header), frame-table arrays through
    frames(arrays), or whose memory was poked by memory(dom) before capture (then put back)."""
    saved = None
    if memory is not None:
        saved = bytes(dom.mem.mv)
        memory(dom)
    try:
        snap = Snapshot.capture(dom)
    finally:
        if saved is not None:
            dom.mem.mv[:] = saved
    c = snap.container
    c.header = json.loads(json.dumps(c.header))
    if change is not None:
        change(c.header)
    if frames is not None:
        arrays = {name: array.array(code, c.sections[f"frames.{name}"])
                  for name, code in (("owner", "h"), ("type", "B"), ("count", "I"), ("flags", "B"))}
        frames(arrays)
        for name, a in arrays.items():
            c.sections[f"frames.{name}"] = a.tobytes()
    return Snapshot.from_bytes(snap.to_bytes())


def refused(snap: Snapshot, pattern: str) -> str:
    """The restore fails with one line matching `pattern`, and leaves no domain on the host."""
    import re
    host = Host(first_domid=1)
    with pytest.raises(SnapshotError) as info:
        snap.restore(host=host)
    text = str(info.value)
    assert "\n" not in text and re.search(pattern, text), text
    assert not host.domains, "a half-restored domain was left on the host"
    return text


def regs(h, **values):
    h["vcpus"][0]["regs"].update(values)


def pv(h, **values):
    h["vcpus"][0]["pv"].update(values)


def test_the_genuine_files_restore(minios, usermode, segments):
    for dom in (minios, usermode, segments):
        restored = Snapshot.capture(dom).restore()
        assert check_live(restored.vcpus[0]) is None
        restored.close()


# -- registers: Xen's arch_set_info_guest and the CPU state of a running PV vCPU ----------------------------
@pytest.mark.parametrize("values,pattern", [
    ({"cs": 0xE008, "ss": 0xE010}, r"cs 0xe008 has RPL 0"),            # the attack: Xen's ring-0 selectors
    ({"cs": 0xE00B}, r"cs 0xe00b names a Xen descriptor"),             # ring-0 code descriptor, RPL 3
    ({"ss": 0xE013}, r"ss 0xe013 names a Xen descriptor"),
    ({"ss": 0}, r"ss 0x0000 has RPL 0"),
    ({"ds": 0xE010}, r"ds 0xe010 has RPL 0"),
    ({"cs": 0x1003}, r"outside the guest's GDT"),
    ({"cs": 0xE037}, r"names the LDT"),
])
def test_privileged_or_foreign_selectors(minios, values, pattern):
    refused(forged(minios, lambda h: regs(h, **values)), pattern)


@pytest.mark.parametrize("rflags,pattern", [
    (0x3202, "IOPL"),                  # real IOPL 3: in/out/cli at CPL 3
    (0x20202, "VM"),
    (0x2, "IF clear"),
    (0x208, "reserved"),
    (0x100202, "VIF/VIP"),
])
def test_rflags(minios, rflags, pattern):
    refused(forged(minios, lambda h: regs(h, rflags=rflags)), pattern)


@pytest.mark.parametrize("values,pattern", [
    ({"rip": 0x0000800000000000}, "rip .* is not canonical"),
    ({"rsp": 0xFFFF000000000000}, "rsp .* is not canonical"),
    ({"fs_base": 1 << 60}, "fs_base .* is not canonical"),
    ({"kernel_gs_base": 1 << 50}, "kernel_gs_base .* is not canonical"),
    ({"cr0": 0x80000033}, "cr0 .* is not Xen's"),                       # WP cleared
    ({"cr4": 0x6A0 | 0x100000 | 0x40000}, "cr4 .* is not Xen's"),       # SMEP on
    ({"efer": 0x501}, "efer .* is not Xen's"),                          # NXE off
])
def test_canonical_addresses_and_xens_control_registers(minios, values, pattern):
    refused(forged(minios, lambda h: regs(h, **values)), pattern)


def test_cr3_must_be_the_validated_l4_of_the_mode(minios, usermode):
    dom = minios
    l1 = next(m for m in range(dom.mem.nr_frames) if dom.frames.type[m] == PGT_l1 and dom.frames.count[m])
    refused(forged(dom, lambda h: (regs(h, cr3=l1 << 12), pv(h, guest_table=l1))), "not a validated L4")
    refused(forged(dom, lambda h: regs(h, cr3=(dom.vcpus[0].guest_table << 12) | 0x18)), "cr3")
    refused(forged(usermode, lambda h: pv(h, guest_table_user=0)), "user mode without a user page table")


def test_a_vcpu_that_never_ran_keeps_start_of_day_registers():
    from miniguest import Domain
    dom = Domain.from_elf(SELFTEST, cmdline="layout")
    try:
        assert not dom.vcpus[0].started
        refused(forged(dom, lambda h: regs(h, rip=0x1000)), "never ran is not start-of-day")
        refused(forged(dom, lambda h: regs(h, cs=0xE008)), "never ran is not start-of-day")
    finally:
        dom.close()


# -- PV state: callbacks, trap table, kernel stack, debug registers, GDT/LDT, IOPL, vm_assist ----------------
@pytest.mark.parametrize("field,value,pattern", [
    ("event_callback", 0x0000900000000000, "event_callback_eip .* is not canonical"),
    ("failsafe_callback", 1 << 63, "failsafe_callback_eip .* is not canonical"),
    ("syscall_callback", 1 << 48, "syscall_callback_eip .* is not canonical"),
    ("nmi_callback", 1 << 48, "nmi_callback .* is not canonical"),
    ("kernel_sp", 1 << 47, "kernel_sp .* is not canonical"),
    ("kernel_ss", 0xE010, "kernel_ss 0xe010 has RPL 0"),
    ("gs_base_kernel", 1 << 55, "gs_base_kernel .* is not canonical"),
    ("iopl", 7, "iopl 7 is not 0-3"),
])
def test_callbacks_stack_and_iopl(minios, field, value, pattern):
    refused(forged(minios, lambda h: pv(h, **{field: value})), pattern)


def test_trap_table(minios):
    def cs0(h):
        h["vcpus"][0]["pv"]["trap_table"][0][2] = 0xE008
    refused(forged(minios, cs0), r"trap_table\[\d+\]\.cs 0xe008 has RPL 0")

    def far(h):
        h["vcpus"][0]["pv"]["trap_table"][0][3] = 1 << 60
    refused(forged(minios, far), "trap_ctxt.*address .* is not canonical")


@pytest.mark.parametrize("debugreg,pattern", [
    ([0xFFFF800000001000, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400], r"debugreg\[0\] .* not an address"),
    ([0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400 | (1 << 13)], "GD"),
    ([0, 0, 0, 0, 0, 0, 0xFFFF0FF0 | (1 << 40), 0x400], "upper bits"),
    ([0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x401 | (2 << 16)], "I/O one without CR4.DE"),
])
def test_debug_registers(minios, debugreg, pattern):
    refused(forged(minios, lambda h: pv(h, debugreg=debugreg)), pattern)


def test_gdt_and_ldt(minios):
    dom = minios
    refused(forged(dom, lambda h: pv(h, gdt_ents=8000)), "gdt_ents")
    writable = next(m for m in range(dom.nr_pages) if dom.frames.type[m] == 7 and dom.frames.count[m]
                    and dom.frames.owner[m] == dom.domid and not dom.frames.flags[m] & PGC_xen_heap)
    refused(forged(dom, lambda h: pv(h, gdt_frames=[writable], gdt_ents=16)), "descriptor-page type")
    refused(forged(dom, lambda h: pv(h, ldt=[0x1234, 4])), "ldt_base not page aligned")
    refused(forged(dom, lambda h: pv(h, ldt=[0xFFFF800000000000, 4])), "ldt_base .* Xen's range")


def test_descriptor_pages_hold_only_what_check_descriptor_stores(segments):
    """A guest GDT frame whose content a file forged: a ring-0 code descriptor (DPL 0) or a call gate."""
    dom = segments
    frames = dom.vcpus[0].gdt_frames
    ring0_code = 0x00209A0000000000            # present, DPL 0, 64-bit code
    call_gate = 0x0000EC000000E008             # present, DPL 3, call gate to Xen's CS
    for desc in (ring0_code, call_gate):
        snap = forged(dom, memory=lambda d, desc=desc: d.mem.write_u64((frames[0] << 12) + 8 * 3, desc))
        refused(snap, "descriptor page .* check_descriptor")


def test_vm_assist(minios):
    refused(forged(minios, lambda h: h["domain"].update(vm_assist=1 << 20)), "vm_assist")


# -- memory and page types: Xen's frames, L4 slots, the frame table, the p2m ---------------------------------
def test_xens_own_frames_are_not_the_files(minios):
    """The entry stub runs at CPL 0 on restore: its bytes (and Xen's GDT page, zero page, tables) must be
    Xen's. A stub turned into `jmp $` (or anything) is refused."""
    dom = minios
    stub = dom.xen.stub_mfn
    refused(forged(dom, memory=lambda d: d.mem.write_u64(stub << 12, 0xFEEB)), "Xen's frame .* does not hold")
    zero = dom.xen.zero_mfn                        # fills the GDT past the guest's frames
    refused(forged(dom, memory=lambda d: d.mem.write_u64((zero << 12) + 8, 0x00209A0000000000)),
            "Xen's frame .* does not hold")


def test_xens_l4_slots_are_rewritten(minios):
    """An L4's Xen slots in a file pointing somewhere else: the restored L4 has Xen's entries (as Xen's
    validation writes them), so nothing at CPL 0 goes through the guest's frames."""
    dom = minios
    l4 = dom.vcpus[0].guest_table
    snap = forged(dom, memory=lambda d: d.mem.write_u64((l4 << 12) + 260 * 8, (l4 << 12) | 0x63))
    restored = snap.restore()
    try:
        assert restored.mem.read_u64((l4 << 12) + 260 * 8) == dom.mem.read_u64((l4 << 12) + 260 * 8)
    finally:
        restored.close()


def test_frame_table_forgeries(minios):
    dom = minios
    l4 = dom.vcpus[0].guest_table
    free = next(m for m in range(dom.nr_pages) if dom.frames.owner[m] == dom.domid and not dom.frames.count[m])
    refused(forged(dom, frames=lambda a: a["count"].__setitem__(l4, a["count"][l4] + 1)), "add up")
    refused(forged(dom, frames=lambda a: a["flags"].__setitem__(free, PGC_xen_heap)), "Xen-heap")
    refused(forged(dom, frames=lambda a: a["owner"].__setitem__(free, 7)), "other than this one")
    refused(forged(dom, lambda h: h["domain"].update(max_pages=h["domain"]["max_pages"] + 100)), "max_pages")
    refused(forged(dom, lambda h: h["domain"].update(tot_pages=h["domain"]["tot_pages"] - 1)), "tot_pages")


def test_an_unreferenced_table_left_validated_is_validated_again(minios):
    """A frame the file marks as a validated L1 with no references (and a writable self-mapping in it):
    restored without PGT_validated, so pinning it validates it -- and Xen's rule refuses it."""
    dom = minios
    free = next(m for m in range(dom.nr_pages) if dom.frames.owner[m] == dom.domid and not dom.frames.count[m]
                and dom.frames.type[m] == 0)

    def table(a):
        a["type"][free] = PGT_l1
        a["flags"][free] = PGT_validated
    snap = forged(dom, frames=table, memory=lambda d: d.mem.write_u64(free << 12, (free << 12) | 0x67))
    restored = snap.restore()
    try:
        assert not restored.frames.flags[free] & PGT_validated
    finally:
        restored.close()


def test_p2m_naming_xens_frames(minios):
    dom = minios
    stub = dom.xen.stub_mfn
    snap = Snapshot.capture(dom)
    raw = array.array("Q", snap.container.sections["p2m"])
    raw[3] = stub
    snap.container.sections["p2m"] = raw.tobytes()
    refused(Snapshot.from_bytes(snap.to_bytes()), "p2m")


# -- event channels and grants -----------------------------------------------------------------------------
def test_event_channels(minios):
    dom = minios
    refused(forged(dom, lambda h: h["events"]["ports"].append([40, 2, 0, 7, 1, -1])), "d7 port 1, which is not")
    refused(forged(dom, lambda h: h["events"]["ports"].append([40, 3, 0, 0, 0, 9])), "state 3")
    refused(forged(dom, lambda h: h["events"]["ports"].append([40, 4, 0, 0, 0, 99])), "out of range")

    def second_binding(h):                         # a VIRQ bound twice on the same vCPU
        h["events"]["ports"] += [[40, 4, 0, 0, 0, 0], [41, 4, 0, 0, 0, 0]]
    refused(forged(dom, second_binding), "as bind_virq never would")

    def rewire(h):
        h["events"]["dom0"][0][1] = 40
        h["events"]["ports"].append([40, 4, 0, 0, 0, 2])
    refused(forged(dom, rewire), "dom0 port .* not its peer")


def test_grant_frames(minios):
    refused(forged(minios, lambda h: h["domain"].update(grant_nr_frames=1 << 20)), "grant_nr_frames")


# -- xenstore: dom0's part of the store and the connection -----------------------------------------------------
def _xs(h):
    return h["backends"]["xenstore"]


def _node(h, path):
    for name, node in _xs(h)["nodes"]:
        if name == path:
            return node
    raise KeyError(path)


def _add_node(h, path, value, perms):
    parent, _, leaf = path.rpartition("/")
    _node(h, parent or "/")["children"].append(leaf)
    _xs(h)["nodes"].append([path, {"value": value, "perms": perms, "children": [], "generation": 1}])


def test_xenstore_target_and_quotas(minios):
    refused(forged(minios, lambda h: _xs(h)["connection"].update(target=0)), "SET_TARGET")
    refused(forged(minios, lambda h: _xs(h)["quotas"].update(nodes=1 << 30)), "quotas differ")


def test_xenstore_dom0_nodes(minios):
    d = minios.domid
    # a backend directory injected by the file, as dom0's: refused (dom0's backends would act on it)
    refused(forged(minios, lambda h: _add_node(h, "/local/domain/0/evil", "/etc/shadow", ["n0"])),
            "owned by d0 but was not made by this toolstack")
    # the domain's own name node made writable / given to the guest
    refused(forged(minios, lambda h: _node(h, f"/local/domain/{d}/name").update(perms=[f"n{d}"])),
            "other permissions than dom0 gave it")
    # dom0's own nodes changed
    refused(forged(minios, lambda h: _node(h, "/local/domain/0/name").update(value="pwned")),
            "value the domain may not write")
    # a node under a parent the domain may not write
    refused(forged(minios, lambda h: _add_node(h, "/tool/x", "", [f"n{d}"])), "parent the domain may not write")


def test_xenstore_transaction_writing_dom0_nodes(minios):
    def tx(h):
        node = {"value": "pwned", "perms": ["n0"], "children": [], "generation": 1}
        acc = {"generation": None, "node": node, "old_perms": None, "modified": True, "fire_exact": True}
        _xs(h)["connection"]["transactions"].append([77, [["/local/domain/0/name", acc]]])
    refused(forged(minios, tx), "transaction 77: writes /local/domain/0/name")


def test_xenstore_connection_quotas(minios):
    def watches(h):
        _xs(h)["connection"]["watches"] = [[f"/local/domain/{minios.domid}/w{i}", "t", 0] for i in range(5000)]
    refused(forged(minios, watches), "watches, more than")


# -- the CLI: one line, exit 1 ---------------------------------------------------------------------------------
def test_cli_refuses_the_ring0_file_with_one_line(minios, tmp_path, capsys):
    path = tmp_path / "ring0.snap"
    path.write_bytes(forged(minios, lambda h: regs(h, cs=0xE008, ss=0xE010)).to_bytes())
    assert main(["snapshot", "run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cs 0xe008" in err and "Traceback" not in err


# -- vcpu_context itself (what VCPUOP_initialise will use) --------------------------------------------------
def test_check_guest_context_returns_xens_errnos_and_fixes_up():
    ctx = GuestContext(cs=0xE008, ss=0xE010, kernel_ss=0xE010, trap_ctxt=[(14, 0, 0xE008, 0x1000)],
                       rflags=0x20202)
    assert check_guest_context(ctx) == 0
    assert (ctx.cs, ctx.ss, ctx.kernel_ss, ctx.trap_ctxt[0][2]) == (0xE00B, 0xE013, 0xE013, 0xE00B)
    assert ctx.rflags == 0x202                                            # VM dropped
    why: list = []
    assert check_guest_context(GuestContext(rip=1 << 47), why=why) == -22 and "rip" in why[0]
    assert check_guest_context(GuestContext(ldt_base=0x1001, ldt_ents=1)) == -22
    assert check_guest_context(GuestContext(debugreg=[0] * 7 + [1 << 13])) == -1      # GD: -EPERM
    assert check_guest_context(GuestContext(vm_assist=1 << 6)) == -22
    assert check_guest_context(GuestContext(flags=0)) == -22            # user mode without a user L4
    assert check_guest_context(GuestContext(flags=0, ctrlreg=[0, 0x5000] + [0] * 6)) == 0
    assert check_guest_context(GuestContext(gdt_ents=8193, gdt_frames=list(range(17)))) == -22


def test_the_gdt_mapping_is_xens(segments):
    """domain.xen_gdt_frames in a file: Xen's descriptor page (GDT page 14) replaced by a guest frame would
    let the file choose the descriptors behind Xen's selectors; the mapping follows the vCPU's frames only."""
    dom = segments
    guest_frame = dom.vcpus[0].gdt_frames[0]

    def swap(h):
        h["domain"]["xen_gdt_frames"][14] = guest_frame
    refused(forged(dom, swap), "xen_gdt_frames")
    refused(forged(dom, lambda h: pv(h, gdt_frames=[], gdt_ents=0)), "xen_gdt_frames|add up")
