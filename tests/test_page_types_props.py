"""Property-based tests of Xen's page-type rules (Hypothesis): random sequences of mmu_update,
update_va_mapping, mmuext_op (pin/unpin at every level, new_baseptr, new_user_baseptr, clear/copy_page),
grant map/unmap and memory_op (decrease/increase_reservation) over a handful of frames -- the guest's own
free pages, frames it got back from increase_reservation, its live page tables, shared_info and a grant
frame (Xen-heap pages), Xen's own frames and a frame past RAM -- with the three attacks of issue 9 among
the steps. Every request goes through the hypercall entry point of a real domain with its arguments in
guest memory (tests/hvguest.py).

After every step: page_types.audit_domain holds (the type counts recount; nothing the guest can reach from
a pinned table or a base pointer maps a page table, a descriptor page or a Xen frame writable, or a frame
it neither owns nor has mapped by grant). Every answer is one Xen gives for that request; a refused
request leaves the frame table as it was; and where the outcome follows from the state alone (the
attacks, Xen-heap and Xen frames, frames outside RAM, type conflicts, double pins) the exact errno is
checked.

MINIGUEST_PROPERTY_EXAMPLES=N runs N examples (default 30; the report's run used more)."""
from __future__ import annotations

import pytest

import os
import struct

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from miniguest.abi.xen import DOMID_SELF
from miniguest.hypervisor.ram import GuestFault
from miniguest.hypervisor.x86.page_types import OWNER_XEN, PGT_l4, PGT_validated, PGT_writable, audit_domain
from miniguest.hypervisor.x86.xen_area import M2P_SLOT, PERDOMAIN_SLOT

from hvguest import (HYPERVISOR_grant_table_op, HYPERVISOR_memory_op, MMU_PT_UPDATE_PRESERVE_AD,
                     MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE, MMUEXT_NEW_BASEPTR, MMUEXT_NEW_USER_BASEPTR, PAGE,
                     PTE_US, RO, RW, HvGuest)

EPERM, EBUSY, EINVAL = -1, -16, -22
PTE_OK = {0, EPERM, EBUSY, EINVAL}                  # get_page_from_lNe / mod_lN_entry
PIN_OK = {0, EBUSY, EINVAL, EPERM}                  # errors of the entries validated come through
GNTST_okay, GNTST_general_error, GNTST_bad_gntref, GNTST_bad_handle = 0, -1, -3, -4
POOL = 8
EXAMPLES = int(os.environ.get("MINIGUEST_PROPERTY_EXAMPLES", "30"))
# Entry values the steps write: flags a guest would use, and some Xen refuses (PSE, PWT above L1 / PAT).
FLAGS = st.sampled_from([RO, RW, 0, RO | PTE_US, RW | (1 << 63), RO | 0x80, RW | 0x8, RO | 0x100, RW | 0xE00])
INDEX = st.sampled_from([0, 1, 2, 511])
_NO_VALIDATED = bytes(v & ~PGT_validated for v in range(256))
PICK = st.integers(0, 63)


class PageTypeMachine(RuleBasedStateMachine):
    @initialize()
    def build(self) -> None:
        self.g = g = HvGuest(pool=POOL, maxmem=33)
        dom = self.dom = g.dom
        lay = dom.layout
        self.extra: list[int] = []                  # frames from increase_reservation: no mapping yet
        self.handles: list[tuple[int, int]] = []    # grant maps: (handle, host VA)
        self.l4_copies: set[int] = set()            # pool frames written as copies of the boot L4
        # One grant-table frame, mapped writable where the guest writes its grant entries.
        setup = struct.pack("<H2xIh6xQ", DOMID_SELF, 1, 0, g.arg_va + 64)
        assert g.call(HYPERVISOR_grant_table_op, 2, g.put_args(setup), 1) == 0
        self.gnt_va = lay.stack + 17 * PAGE
        assert g.uvm(self.gnt_va, (dom.grants.frames[0] << 12) | RW) == 0
        self.boot_tables = [g.mfn_of(lay.pt_base + i * PAGE) for i in range(lay.nr_pt_frames)]
        self.special = [dom.xen.shared_info_mfn, dom.grants.frames[1], dom.xen.m2p_l3, dom.xen.pd_l1,
                        dom.xen.m2p_superpages[0], dom.mem.nr_frames]
        self.arg_slot = g.arg_va >> 39

    # -- helpers ----------------------------------------------------------------------------------------------
    def frames(self) -> list[int]:
        return self.g.pool + self.extra + self.boot_tables + self.special

    def pick(self, i: int) -> int:
        f = self.frames()
        return f[i % len(f)]

    def state(self) -> tuple:
        """The frame table as Xen's rules define it: owner, count, flags and linear count of every frame, and
        the type and PGT_validated of the referenced ones (an unreferenced frame's old type does not matter)."""
        fr = self.dom.frames
        flags = fr.flags.tobytes()
        return (fr.owner.tobytes(), fr.count.tobytes(), flags.translate(_NO_VALIDATED), fr.linear.tobytes(),
                tuple((m, fr.type[m], flags[m] & PGT_validated) for m in fr.referenced_frames()))

    def expect(self, rc, allowed, before, what: str = "") -> None:
        event(f"{what or 'request'} -> {rc}")
        assert rc in allowed, rc
        if rc:
            assert self.state() == before, "a refused request changed the frame table"

    def writable(self, va: int) -> bool:
        t = self.g.vcpu.aspace.walk(va)
        return t is not None and bool(t[1] & 2) and bool(t[1] & PTE_US)

    def mapped_writable(self, mfn: int) -> bool:
        """The pool page's own VA maps it, writable (what a guest needs to fill a page)."""
        t = self.g.vcpu.aspace.walk(self.g.va_of(mfn))
        return t is not None and t[0] >> 12 == mfn and bool(t[1] & 2)

    # -- page-table updates ---------------------------------------------------------------------------------
    @rule(i=PICK, index=INDEX, to=PICK, flags=FLAGS)
    def guest_writes_its_page(self, i, index, to, flags):
        """A plain store through the guest's own mapping: only possible where that mapping is writable."""
        g = self.g
        if i % len(self.frames()) >= POOL:
            return
        va = g.pool_va[i % len(self.frames())]
        value = (self.pick(to) << 12) | flags
        if self.writable(va):
            g.write(va + index * 8, value)
        else:
            try:
                g.write(va + index * 8, value)
            except GuestFault:
                return
            raise AssertionError("wrote through a mapping that is not writable")

    @rule(i=PICK, index=INDEX, to=PICK, flags=FLAGS, preserve=st.booleans())
    def mmu_update(self, i, index, to, flags, preserve):
        g, frames = self.g, self.dom.frames
        table = self.pick(i)
        if table in self.boot_tables or (table == g.vcpu.guest_table and index == self.arg_slot):
            return                      # what maps the arguments is left alone (see l4_slot_update)
        before = self.state()
        value = (self.pick(to) << 12) | flags
        rc = g.pte(table, index, value, MMU_PT_UPDATE_PRESERVE_AD if preserve else 0)
        self.expect(rc, PTE_OK, before, "mmu_update")
        if not frames.owned_by(table, self.dom.domid):
            assert rc == EINVAL

    @rule(slot=st.sampled_from([10, 11, M2P_SLOT, PERDOMAIN_SLOT]), to=PICK, flags=FLAGS)
    def l4_slot_update(self, slot, to, flags):
        """Entries of the live L4 far from the arguments: linear entries, other tables, Xen's slots."""
        g = self.g
        before = self.state()
        rc = g.pte(g.l4, slot, (self.pick(to) << 12) | flags)
        self.expect(rc, PTE_OK, before, "l4 slot update")
        if slot in (M2P_SLOT, PERDOMAIN_SLOT):
            assert rc == EINVAL

    @rule(i=st.integers(0, POOL - 1), to=PICK, flags=FLAGS)
    def update_va_mapping(self, i, to, flags):
        g, frames = self.g, self.dom.frames
        mfn = self.pick(to)
        ours = frames.owned_by(mfn, self.dom.domid)
        conflict = ours and frames.count[mfn] > 0 and frames.type[mfn] != PGT_writable
        before = self.state()
        rc = g.uvm(g.pool_va[i], (mfn << 12) | flags)
        self.expect(rc, PTE_OK, before, "update_va_mapping")
        if flags & 1:                                    # present: get_page_from_l1e's checks, in its order
            if flags & 0x98:
                assert rc == EINVAL                      # PWT/PCD/PAT
            elif mfn >= self.dom.mem.nr_frames:
                assert rc == EPERM
            elif not ours:
                assert rc == EBUSY
            elif flags & 2 and conflict:
                assert rc == EBUSY
            else:
                assert rc == 0

    # -- mmuext_op --------------------------------------------------------------------------------------------
    @rule(level=st.integers(1, 4), i=PICK)
    def pin(self, level, i):
        g, frames = self.g, self.dom.frames
        mfn = self.pick(i)
        ours = frames.owned_by(mfn, self.dom.domid)
        count, ftype = (frames.count[mfn], frames.type[mfn]) if ours else (0, 0)
        pinned = ours and frames.is_pinned(mfn)
        before = self.state()
        rc = g.pin(level, mfn)
        self.expect(rc, PIN_OK, before, f"pin L{level}")
        if not ours or frames.is_xen_heap(mfn):
            assert rc == EINVAL                          # get_page_from_gfn / "Bad type" (Xen heap)
        elif count and (ftype != level or pinned):
            assert rc == EINVAL                          # "Bad type" / "already pinned"
        elif count:
            assert rc == 0                               # a validated table of that level: one more ref

    @rule(i=PICK)
    def unpin(self, i):
        g, frames = self.g, self.dom.frames
        mfn = self.pick(i)
        if mfn in self.boot_tables:
            return                      # (unpinning is fine, but keeps them for the arguments' sake)
        pinned = frames.valid(mfn) and frames.is_pinned(mfn)
        before = self.state()
        rc = g.unpin(mfn)
        self.expect(rc, {0, EINVAL}, before, "unpin")
        assert (rc == 0) == (pinned and frames.owned_by(mfn, self.dom.domid))

    @rule(i=st.integers(0, POOL - 1))
    def make_l4_copy(self, i):
        """Write the boot L4's guest entries into a pool page: a table a new base pointer may use."""
        g = self.g
        mfn = g.pool[i]
        if not self.mapped_writable(mfn):
            return
        entries = struct.unpack_from("<256Q", self.dom.mem.mv, g.l4 << 12)
        g.vcpu.mem.write(g.va_of(mfn), struct.pack("<256Q", *entries))
        self.l4_copies.add(mfn)

    @rule(i=PICK, user=st.booleans())
    def new_baseptr(self, i, user):
        g, frames = self.g, self.dom.frames
        mfn = self.pick(i)
        current = g.vcpu.guest_table
        if not user:
            # The kernel base must keep mapping the arguments (they are read through it).
            same = (mfn == g.l4 or (mfn in self.l4_copies and self.dom.mem.read_u64((mfn << 12) + self.arg_slot * 8)
                                    == self.dom.mem.read_u64((g.l4 << 12) + self.arg_slot * 8)))
            if not same:
                return
        before = self.state()
        rc = g.mmuext(MMUEXT_NEW_USER_BASEPTR if user else MMUEXT_NEW_BASEPTR, mfn)
        self.expect(rc, PIN_OK, before, "new_user_baseptr" if user else "new_baseptr")
        if rc == 0:
            assert frames.type[mfn] == PGT_l4 and frames.is_validated(mfn)
            if not user:
                assert g.vcpu.guest_table == mfn and g.vcpu.aspace.walk(g.arg_va)
        elif not user:
            assert g.vcpu.guest_table == current

    @rule()
    def no_user_baseptr(self):
        assert self.g.mmuext(MMUEXT_NEW_USER_BASEPTR, 0) == 0

    @rule(dst=PICK, src=PICK, copy=st.booleans())
    def clear_or_copy_page(self, dst, src, copy):
        g, frames = self.g, self.dom.frames
        d, s = self.pick(dst), self.pick(src)
        if d in (g.mfn_of(g.arg_va), g.mfn_of(self.gnt_va)) or d in self.boot_tables:
            return
        before = self.state()
        rc = g.mmuext(MMUEXT_COPY_PAGE if copy else MMUEXT_CLEAR_PAGE, d, s)
        self.expect(rc, {0, EINVAL}, before, "copy_page" if copy else "clear_page")
        ok_dst = frames.owned_by(d, self.dom.domid) and (frames.count[d] == 0 or frames.type[d] == PGT_writable)
        ok_src = not copy or frames.owned_by(s, self.dom.domid)
        assert (rc == 0) == (ok_dst and ok_src)

    # -- grants -----------------------------------------------------------------------------------------------
    @rule(ref=st.integers(0, 3), to=PICK, readonly_grant=st.booleans(), readonly=st.booleans(),
          i=st.integers(0, POOL - 1), device=st.booleans())
    def grant_map(self, ref, to, readonly_grant, readonly, i, device):
        g = self.g
        mfn = self.pick(to)
        g.vcpu.mem.write(self.gnt_va + ref * 8, struct.pack("<HHI", 1 | (4 if readonly_grant else 0),
                                                             self.dom.domid, mfn & 0xFFFFFFFF))
        flags = 2 | (4 if readonly else 0) | (1 if device else 0)
        op = struct.pack("<QIIHhIQ", g.pool_va[i], flags, ref, self.dom.domid, 0, 0, 0)
        arg = g.put_args(op)
        before = self.state()
        assert g.call(HYPERVISOR_grant_table_op, 0, arg, 1) == 0
        status, handle = struct.unpack("<hI", g.vcpu.mem.read(arg + 18, 6))
        event(f"grant map -> {status}")
        assert status in (GNTST_okay, GNTST_general_error, -9), status       # GNTST_bad_page
        if status:
            assert self.state() == before
        else:
            self.handles.append((handle, g.pool_va[i]))

    @rule(k=PICK, device=st.booleans())
    def grant_unmap(self, k, device):
        g = self.g
        if not self.handles:
            return
        handle, va = self.handles[k % len(self.handles)]
        m = self.dom.grants.maptrack[handle]
        bus = (m.mfn << 12) if device and m is not None and m.flags & 1 else 0
        arg = g.put_args(struct.pack("<QQIh2x", va, bus, handle, 0))
        assert g.call(HYPERVISOR_grant_table_op, 1, arg, 1) == 0
        status = struct.unpack("<h", g.vcpu.mem.read(arg + 20, 2))[0]
        assert status in (GNTST_okay, GNTST_general_error, GNTST_bad_handle, -6), status
        maptrack = self.dom.grants.maptrack
        if handle >= len(maptrack) or maptrack[handle] is None:
            self.handles = [h for h in self.handles if h[0] != handle]

    @rule(src=PICK, dst=PICK, src_gref=st.booleans(), dst_gref=st.booleans(), ref=st.integers(0, 3),
          soff=st.sampled_from([0, 8, 4000]), doff=st.sampled_from([0, 16, 4090]), length=st.sampled_from([0, 8, 96]))
    def grant_copy(self, src, dst, src_gref, dst_gref, ref, soff, doff, length):
        """GNTTABOP_copy between the same frames, by frame or through the grants set up by grant_map: the
        destination's writable type reference lives only for the copy."""
        g = self.g
        s, d = self.pick(src), self.pick(dst)
        if d in (g.mfn_of(g.arg_va), g.mfn_of(self.gnt_va)) or d in self.boot_tables:
            return
        flags = (1 if src_gref else 0) | (2 if dst_gref else 0)
        op = struct.pack("<QHH4xQHH4xHHh2x", ref if src_gref else s, DOMID_SELF, soff,
                         ref if dst_gref else d, DOMID_SELF, doff, length, flags, 0x777)
        arg = g.put_args(op)
        before = self.state()
        assert g.call(HYPERVISOR_grant_table_op, 5, arg, 1) == 0
        status = struct.unpack("<h", g.vcpu.mem.read(arg + 36, 2))[0]
        event(f"grant copy -> {status}")
        assert status in (0, -1, -3, -9, -10), status
        assert self.state() == before
        frames = self.dom.frames
        if length and not src_gref and not dst_gref:
            ok_src = frames.owned_by(s, self.dom.domid)
            ok_dst = frames.owned_by(d, self.dom.domid)
            writable = ok_dst and (frames.count[d] == 0 or frames.type[d] == PGT_writable)
            want = (-9 if not ok_src or not ok_dst else -1 if not writable
                    else -10 if soff + length > 4096 or doff + length > 4096 else 0)
            assert status == want, (status, want)

    # -- memory_op --------------------------------------------------------------------------------------------
    @rule(i=PICK)
    def decrease_reservation(self, i):
        g = self.g
        mfn = self.pick(i)
        if mfn in (g.mfn_of(g.arg_va), g.mfn_of(self.gnt_va)):
            return
        list_va = g.put_args(struct.pack("<Q", mfn), 128)
        res = g.put_args(struct.pack("<QQIIH", list_va, 1, 0, 0, DOMID_SELF), 64)
        owned = self.dom.frames.owned_by(mfn, self.dom.domid)
        assert g.call(HYPERVISOR_memory_op, 1, res) == (1 if owned else 0)

    @rule()
    def increase_reservation(self):
        g = self.g
        list_va = g.put_args(struct.pack("<Q", 0), 128)
        res = g.put_args(struct.pack("<QQIIH", list_va, 1, 0, 0, DOMID_SELF), 64)
        done = g.call(HYPERVISOR_memory_op, 0, res)
        assert done in (0, 1)
        if done:
            mfn = struct.unpack("<Q", g.vcpu.mem.read(list_va, 8))[0]
            frames = self.dom.frames
            assert frames.owner[mfn] == self.dom.domid and frames.count[mfn] == 0
            if mfn not in self.extra:
                self.extra.append(mfn)

    # -- the attacks of issue 9 ---------------------------------------------------------------------------------
    @rule(i=st.integers(0, POOL - 1), j=st.integers(0, POOL - 1), up=st.booleans())
    def attack_writable_self_map(self, i, j, up):
        """1: a page table that maps itself writable (or, one level up, an L2 whose L1 maps the L2), built
        through the pages' own writable mappings, which are then dropped before the pin. Xen: -EBUSY
        (get_page_from_l1e cannot take a writable reference on a frame being validated as a table), or
        -EINVAL when something else still holds a writable reference on a frame ("Bad type")."""
        g, frames = self.g, self.dom.frames
        a, b = g.pool[i], g.pool[j]
        pages = (a, b) if up else (a,)
        if up and a == b or not all(self.mapped_writable(f) for f in pages):
            return
        if up:
            g.write(g.va_of(a), (b << 12) | RW)
            g.write(g.va_of(b), (a << 12) | RW)
        else:
            g.write(g.va_of(a), (a << 12) | RW)
        for f in pages:
            assert g.unmap(f) == 0
        free = all(frames.count[f] == 0 for f in pages)
        before = self.state()
        rc = g.pin(2 if up else 1, a)
        event(f"attack 1 ({'L2' if up else 'L1'}, {'free' if free else 'referenced'}) -> {rc}")
        assert rc == (EBUSY if free else EINVAL)
        assert self.state() == before

    @rule(level=st.integers(1, 4), which=st.integers(0, 1))
    def attack_pin_xen_heap(self, level, which):
        """2: shared_info or a grant-table frame as a page table."""
        mfn = (self.dom.xen.shared_info_mfn, self.dom.grants.frames[0])[which]
        before = self.state()
        assert self.g.pin(level, mfn) == EINVAL
        assert self.state() == before

    @rule(slot=st.sampled_from([10, 11]))
    def attack_linear_l4(self, slot):
        """3: a read-only linear L4 entry: Xen's slots seen as guest tables give no user access beyond what
        Xen exposes (the audit walks every path through it)."""
        g = self.g
        rc = g.pte(g.l4, slot, (g.l4 << 12) | RO)
        assert rc == 0
        va = (slot << 39) | (slot << 30) | (slot << 21) | (PERDOMAIN_SLOT << 12)
        t = g.vcpu.aspace.walk(va)
        assert t is None or not t[1] & PTE_US

    # -- invariants -----------------------------------------------------------------------------------------
    @invariant()
    def audit(self):
        if hasattr(self, "dom"):
            problems = audit_domain(self.dom)
            assert not problems, problems[:5]
            frames = self.dom.frames
            for mfn in self.special[:2]:
                assert frames.is_xen_heap(mfn) and frames.type[mfn] == PGT_writable and frames.count[mfn] >= 1
            assert frames.owner[self.special[2]] == OWNER_XEN

    def teardown(self):
        if hasattr(self, "g"):
            self.g.close()


PageTypeMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.filter_too_much])
test_page_type_rules_hold_under_random_requests = pytest.mark.slow(PageTypeMachine.TestCase)   # property test
