"""Xen's page-type rules against the attacks of issue 9, request by request through the hypercall entry
point of a real domain (tests/hvguest.py); the autouse audit (conftest.py) checks the books after each."""
from __future__ import annotations

import pytest

from miniguest.hypervisor.x86.page_types import (OWNER_XEN, PGT_l1, PGT_l2, PGT_none, PGT_writable,
                                                 audit_domain)
from miniguest.hypervisor.x86.xen_area import M2P_SLOT, PERDOMAIN_SLOT

from hvguest import PTE_US, RO, RW, HvGuest

EPERM, EBUSY, EINVAL = -1, -16, -22


@pytest.fixture
def g():
    guest = HvGuest()
    yield guest
    assert not audit_domain(guest.dom)
    guest.close()


def test_a_table_mapping_itself_writable_cannot_be_pinned(g):
    # Attack 1: F[0] maps F read-write, F unmapped, then pinned as an L1. While F is validated it already
    # carries type L1 with one reference, so the writable reference its own entry asks for fails (Xen's
    # get_page_from_l1e: could_not_pin, -EBUSY) and F is left untyped.
    f = g.pool[0]
    g.write(g.va_of(f), (f << 12) | RW)
    assert g.unmap(f) == 0
    assert g.pin(1, f) == EBUSY
    frames = g.dom.frames
    assert frames.type[f] == PGT_none and frames.count[f] == 0 and not frames.is_pinned(f)
    assert g.remap(f) == 0                                # still plain memory: mappable writable again


def test_the_same_one_level_up(g):
    # An L2 A whose L1 B maps A read-write: validating A validates B, whose entry asks for a writable
    # reference on A -- which is an L2 under validation. -EBUSY, and neither frame keeps a type.
    a, b = g.pool[:2]
    g.write(g.va_of(a), (b << 12) | RW)
    g.write(g.va_of(b), (a << 12) | RW)
    assert g.unmap(a) == g.unmap(b) == 0
    assert g.pin(2, a) == EBUSY
    frames = g.dom.frames
    assert (frames.type[a], frames.count[a], frames.type[b], frames.count[b]) == (PGT_none, 0, PGT_none, 0)
    # B pinned first holds a writable reference on A, so A cannot become an L2 (Xen: "Bad type", -EINVAL).
    assert g.pin(1, b) == 0
    assert frames.type[a] == PGT_writable and frames.count[a] == 1
    assert g.pin(2, a) == EINVAL
    assert g.unpin(b) == 0 and frames.count[a] == 0
    # Nor can a validated L2 be pointed at an L1 that maps the L2 writable.
    assert g.remap(b) == 0
    g.write(g.va_of(b), 0)                                # B no longer maps A
    assert g.unmap(b) == 0
    assert g.pin(2, a) == 0                               # A now validates: its entry maps B, an empty L1
    assert frames.type[b] == PGT_l1
    assert g.pin(2, a) == EINVAL                           # already pinned
    assert g.unpin(a) == 0
    c = g.pool[2]
    g.write(g.va_of(c), (a << 12) | RW)                   # C maps A writable
    assert g.unmap(c) == 0
    assert g.pin(2, a) == 0
    assert g.pte(a, 1, (c << 12) | RW) == EBUSY            # A[1] -> C, C[0] -> A writable: refused
    assert g.pte(a, 1, (c << 12) | RO) == EBUSY
    assert frames.type[c] == PGT_none and frames.count[c] == 0
    assert g.unpin(a) == 0


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_xen_heap_pages_never_become_page_tables(g, level):
    # Attack 2: shared_info and the grant-table frames are Xen-heap pages shared with the guest: they hold
    # a permanent writable type reference (share_xen_page_with_guest), so pinning them is "Bad type", -EINVAL;
    # so is an L2 entry naming one as an L1.
    dom = g.dom
    for mfn in [dom.xen.shared_info_mfn] + dom.grants.frames[:2]:
        assert g.pin(level, mfn) == EINVAL
        assert dom.frames.type[mfn] == PGT_writable and dom.frames.count[mfn] == 1
    a = g.pool[0]
    assert g.unmap(a) == 0 and g.pin(2, a) == 0
    assert g.pte(a, 0, (dom.xen.shared_info_mfn << 12) | RW) == EINVAL
    assert g.pte(a, 0, (dom.grants.frames[0] << 12) | RO) == EINVAL
    assert g.unpin(a) == 0


def test_xen_heap_pages_are_mappable_and_writable(g):
    dom = g.dom
    va = g.pool_va[0]
    for mfn in (dom.xen.shared_info_mfn, dom.grants.frames[0]):
        assert g.uvm(va, (mfn << 12) | RW) == 0
        assert dom.frames.count[mfn] == 2
        g.write(va + 0x800, 0x1234)                         # shared_info: a place nothing else uses
        assert g.uvm(va, 0) == 0 and dom.frames.count[mfn] == 1
    assert g.remap(g.pool[0]) == 0


def test_xen_frames_and_frames_outside_ram(g):
    dom = g.dom
    va = g.pool_va[0]
    l1 = dom.frames
    xen = [dom.xen.m2p_l3, dom.xen.pd_l1, dom.xen.stack_mfn, dom.xen.m2p_superpages[0]]
    for mfn in xen:
        assert l1.owner[mfn] == OWNER_XEN
        assert g.uvm(va, (mfn << 12) | RO) == EBUSY        # get_page_from_l1e: not the domain's
        assert g.uvm(va, (mfn << 12) | RW) == EBUSY
        assert g.pin(1, mfn) == EINVAL                      # get_page_from_gfn fails
        assert g.mmuext(16, mfn) == EINVAL                  # MMUEXT_CLEAR_PAGE
        assert g.pte(mfn, 0, 0) == EINVAL                   # a PTE in a frame not the domain's
    assert g.uvm(va, (dom.mem.nr_frames << 12) | RO) == EPERM      # not RAM: MMIO not permitted
    assert g.uvm(va, ((1 << 52) - 4096) | RO) == EINVAL             # INVALID_MFN
    assert g.remap(g.pool[0]) == 0


def test_linear_l4_entry_sees_only_what_xen_exposes(g):
    # Attack 3: a read-only linear L4 entry (allowed: get_l4_linear_pagetable) walks Xen's L4 slots as if
    # they were guest tables. Xen's per-domain slot is supervisor-only at the L4 entry: no user access. The
    # read-only M2P is mapped with superpages, as Xen maps it: through the linear entry the guest reaches
    # the M2P's L3 and L2 (read-only, as on Xen) and the M2P itself -- never an L1 of Xen's, never writable.
    dom = g.dom
    x = 10
    assert g.pte(g.l4, x, (g.l4 << 12) | RO) == 0

    def va(a, b, c, d):
        return (a << 39) | (b << 30) | (c << 21) | (d << 12)

    def walk(v):
        return g.vcpu.aspace.walk(v)
    ma, flags = walk(va(x, x, x, x))
    assert ma >> 12 == g.l4 and not flags & 2                         # the L4 itself, read-only
    ma, flags = walk(va(x, x, x, PERDOMAIN_SLOT))
    assert not flags & PTE_US                                          # supervisor-only: the guest faults
    ma, flags = walk(va(x, x, x, M2P_SLOT))
    assert ma >> 12 == dom.xen.m2p_l3 and flags & PTE_US and not flags & 2
    ma, flags = walk(va(x, x, M2P_SLOT, 0))
    assert ma >> 12 == dom.xen.m2p_l2 and not flags & 2
    ma, flags = walk(va(x, M2P_SLOT, 0, 0))
    assert ma >> 12 == dom.xen.m2p_superpages[0] and not flags & 2    # M2P data, not a table
    for v in (va(x, x, x, x), va(x, x, x, M2P_SLOT), va(x, M2P_SLOT, 0, 0)):
        with pytest.raises(Exception):
            g.vcpu.mem.write_u64(v, 0)
    # The M2P through its own address: 2 MiB superpages, readable, not writable.
    ma, flags = walk(0xFFFF800000000000)
    assert ma >> 12 == dom.xen.m2p_superpages[0] and flags & PTE_US and not flags & 2
    ma, _ = walk(0xFFFF800000000000 + 8 * g.l4)
    assert dom.mem.read_u64(ma) == dom.layout.pfn(dom.layout.pt_base)
    assert g.pte(g.l4, x, (g.l4 << 12) | RW) == EINVAL                # linear with write permission
    assert g.pte(g.l4, x, 0) == 0


def test_m2p_strict_keeps_the_m2p_out_of_user_tables(g):
    dom = g.dom
    u = g.pool[0]
    assert g.unmap(u) == 0
    # Without m2p_strict a new L4 is created without the M2P slot; it gets it once used as a kernel table.
    assert g.mmuext(15, u) == 0                            # MMUEXT_NEW_USER_BASEPTR
    assert dom.mem.read_u64((u << 12) + M2P_SLOT * 8) == 0
    assert dom.mem.read_u64((g.l4 << 12) + M2P_SLOT * 8) != 0
    assert g.mmuext(15, 0) == 0
    assert g.call(21, 0, 32) == 0                          # vm_assist(enable, m2p_strict)
    assert g.mmuext(15, u) == 0
    assert dom.mem.read_u64((u << 12) + M2P_SLOT * 8) == 0
    assert g.mmuext(15, 0) == 0 and g.unpin(u) == EINVAL  # (never pinned)
    w = g.pool[1]
    assert g.unmap(w) == 0 and g.pin(4, w) == 0            # with m2p_strict: created with the slot ...
    assert dom.mem.read_u64((w << 12) + M2P_SLOT * 8) != 0
    assert g.mmuext(15, w) == 0                            # ... and zapped when used for user mode
    assert dom.mem.read_u64((w << 12) + M2P_SLOT * 8) == 0
    assert g.mmuext(15, 0) == 0 and g.unpin(w) == 0


def test_type_changes_only_at_count_zero(g):
    dom = g.dom
    f = g.pool[0]
    frames = dom.frames
    assert frames.type[f] == PGT_writable and frames.count[f] == 1      # the bootstrap RW mapping
    assert g.pin(1, f) == EINVAL
    assert g.map_ro(f) == 0 and frames.count[f] == 0
    assert g.pin(1, f) == 0 and frames.type[f] == PGT_l1 and frames.is_validated(f)
    assert g.remap(f) == EBUSY                              # writable mapping of a page table
    assert g.unpin(f) == 0 and frames.count[f] == 0 and not frames.is_validated(f)
    assert g.remap(f) == 0 and frames.type[f] == PGT_writable
    # A frame that is a validated table can be written only through mmu_update.
    assert g.map_ro(f) == 0 and g.pin(1, f) == 0
    assert g.pte(f, 3, (g.pool[1] << 12) | RW) == 0
    assert frames.count[g.pool[1]] == 2
    assert g.pte(f, 3, (g.pool[1] << 12) | RW | 0x40) == 0            # dirty bit only: fast path
    assert frames.count[g.pool[1]] == 2
    assert g.unpin(f) == 0 and frames.count[g.pool[1]] == 1
    assert dom.mem.read_u64((f << 12) + 24) & 0x40
    assert frames.type[f] == PGT_l1 and frames.count[f] == 0


def test_snapshot_restore_refuses_inconsistent_frame_state(g):
    from miniguest.hypervisor.save import StateError
    from miniguest.hypervisor.x86.page_types import FrameTable
    frames = g.dom.frames
    saved = frames.save()
    assert set(saved) == set(FrameTable.SECTIONS)
    bad = dict(saved)
    bad["owner"] = saved["owner"][:-2] + b"\x05\x00"
    with pytest.raises(StateError, match="owner"):
        frames.restore(bad, g.dom.domid)
    with pytest.raises(StateError, match="missing"):
        frames.restore({**saved, "linear": None}, g.dom.domid)
    frames.restore(saved, g.dom.domid)
    assert frames.save() == saved
    assert frames.type[g.l4] == 4 and frames.type[g.pool[0]] == PGT_writable
