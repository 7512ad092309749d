"""Frame ownership and Xen's page-type system for PV page tables.

A PV guest runs on its own page tables, so Xen must make sure those tables can only map frames the domain
owns and that no frame is at once a page table and writable (else the guest could edit its tables behind
Xen's back and map anything). Like Xen, every frame has an owner and a type -- none, writable, L1..L4 -- with
a type count; a frame takes a page-table type only after its contents validate (each present entry refers
to a frame of the right type one level down, all owned by the domain), and a validated table holds type
references on what it maps: writable references for RW leaf mappings, Ln-1 references for lower tables.
When the count drops to zero the table is devalidated and releases what it held. Errno choices follow Xen's
get_page_from_l1e / get_page_and_type_from_mfn: bad flags or a wrong-typed/foreign table -> -EINVAL,
a frame outside RAM -> -EPERM, a frame owned by someone else or in conflicting use -> -EBUSY.
"""
from __future__ import annotations

import struct
from typing import Callable, Optional

from miniguest.abi import errno
from miniguest.abi.arch_x86 import (HYPERVISOR_L4_FIRST, HYPERVISOR_L4_LAST, PTE_ADDR_MASK, _PAGE_GLOBAL, _PAGE_PAT, _PAGE_PCD, _PAGE_PRESENT,
                                    _PAGE_PSE, _PAGE_PWT, _PAGE_RW, _PAGE_USER)
from miniguest.hypervisor.ram import MachineMemory
from miniguest.hypervisor.save import StateError, pack_array, unpack_array

# Owners.
OWNER_NONE = -1
OWNER_XEN = 0x7FF2          # DOMID_XEN

# Page types.
PGT_none = 0
PGT_l1 = 1
PGT_l2 = 2
PGT_l3 = 3
PGT_l4 = 4
PGT_writable = 7
PGT_seg_desc = 8
TYPE_NAMES = {PGT_none: "none", PGT_l1: "L1", PGT_l2: "L2", PGT_l3: "L3", PGT_l4: "L4",
              PGT_writable: "writable", PGT_seg_desc: "seg_desc"}

# Flags a PV guest may not set (Xen's base_disallow_mask for a domain without I/O privileges): caching
# attributes everywhere, PSE (no superpages) and GLOBAL above L1.
L1_DISALLOW = _PAGE_PWT | _PAGE_PCD | _PAGE_PAT
UPPER_DISALLOW = _PAGE_PWT | _PAGE_PCD | _PAGE_PSE | _PAGE_GLOBAL
_ENTRY = struct.Struct("<Q")


class PageTypeError(Exception):
    """A page-table operation Xen would refuse; `err` is the negative errno to return."""

    def __init__(self, err: int, why: str) -> None:
        super().__init__(why)
        self.err = err


def entry_mfn(entry: int) -> int:
    return (entry & PTE_ADDR_MASK) >> 12


class FrameTable:
    """Owner, type, type count and pin state of every machine frame."""

    def __init__(self, mem: MachineMemory) -> None:
        n = mem.nr_frames
        self.mem = mem
        self.owner = [OWNER_NONE] * n
        self.type = [PGT_none] * n
        self.count = [0] * n
        self.pinned = [False] * n
        # Linear ("recursive") page tables, as Xen allows them for PV (get_lN_linear_pagetable): a read-only
        # Ln entry may point at its own table (no reference held) or at another validated Ln table (a type
        # reference of type Ln). XSA-240's rule keeps them acyclic: a table either holds such entries
        # (count > 0) or is the target of them (count < 0), never both. Sparse: mfn -> count.
        self.linear: dict[int, int] = {}
        # Filled by the hypervisor: writes Xen's own slots into a freshly validated L4.
        self.install_xen_l4_slots: Optional[Callable[[int], None]] = None

    # -- type references ----------------------------------------------------------------------------------
    def get_type(self, mfn: int, t: int, domid: int) -> None:
        """Take a type reference of type t on a frame owned by domid (validating it on first use)."""
        if not 0 <= mfn < self.mem.nr_frames:
            raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is not RAM")
        if self.owner[mfn] != domid:
            raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is not owned by d{domid}")
        if self.count[mfn]:
            if self.type[mfn] != t:
                raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is in use as {TYPE_NAMES[self.type[mfn]]}, "
                                    f"not {TYPE_NAMES[t]}")
            self.count[mfn] += 1
            return
        if PGT_l1 <= t <= PGT_l4:
            self._validate(mfn, t, domid)
        self.type[mfn] = t
        self.count[mfn] = 1

    def put_type(self, mfn: int) -> None:
        self.count[mfn] -= 1
        if self.count[mfn] == 0:
            t = self.type[mfn]
            self.type[mfn] = PGT_none
            if PGT_l1 <= t <= PGT_l4:
                self._devalidate(mfn, t)

    # -- table validation ---------------------------------------------------------------------------------
    @staticmethod
    def guest_l4_slot(index: int) -> bool:
        return not HYPERVISOR_L4_FIRST <= index <= HYPERVISOR_L4_LAST

    def _validate(self, mfn: int, t: int, domid: int) -> None:
        mv = self.mem.mv
        base = mfn << 12
        taken: list[int] = []
        try:
            for i in range(512):
                e = _ENTRY.unpack_from(mv, base + i * 8)[0]
                if not e & _PAGE_PRESENT:
                    continue
                if t == PGT_l4 and not self.guest_l4_slot(i):
                    continue          # Xen's slots: overwritten below, never counted
                self.get_entry_ref(e, t, domid, mfn)
                taken.append(e)
                if not e & _PAGE_USER:
                    # 64-bit PV kernels run in ring 3: Xen forces USER on (adjust_guest_lNe).
                    _ENTRY.pack_into(mv, base + i * 8, e | _PAGE_USER)
        except PageTypeError:
            for e in taken:
                self.put_entry_ref(e, t, mfn)
            raise
        if t == PGT_l4 and self.install_xen_l4_slots is not None:
            self.install_xen_l4_slots(mfn)

    def _devalidate(self, mfn: int, t: int) -> None:
        mv = self.mem.mv
        base = mfn << 12
        for i in range(512):
            e = _ENTRY.unpack_from(mv, base + i * 8)[0]
            if e & _PAGE_PRESENT and (t != PGT_l4 or self.guest_l4_slot(i)):
                self.put_entry_ref(e, t, mfn)

    def get_entry_ref(self, e: int, level: int, domid: int, table: int = -1) -> None:
        """The references a present entry of level-`level` table `table` holds (Xen's get_page_from_lNe)."""
        target = entry_mfn(e)
        if level == PGT_l1:
            if e & L1_DISALLOW:
                raise PageTypeError(-errno.EINVAL, f"bad L1 flags {e & L1_DISALLOW:#x}")
            if target >= self.mem.nr_frames:
                raise PageTypeError(-errno.EPERM, f"mfn {target:#x} is not RAM (MMIO mapping not permitted)")
            if self.owner[target] != domid:
                raise PageTypeError(-errno.EBUSY, f"mfn {target:#x} is not owned by d{domid}")
            if e & _PAGE_RW:
                try:
                    self.get_type(target, PGT_writable, domid)
                except PageTypeError as exc:
                    raise PageTypeError(-errno.EBUSY, f"cannot map mfn {target:#x} writable: {exc}") from None
            return
        if e & UPPER_DISALLOW:
            raise PageTypeError(-errno.EINVAL, f"bad L{level} flags {e & UPPER_DISALLOW:#x}")
        if target == table:
            if e & _PAGE_RW:
                raise PageTypeError(-errno.EINVAL, f"linear L{level} entry with write permission")
            return                      # the table maps itself: no reference
        try:
            self.get_type(target, level - 1, domid)
        except PageTypeError as exc:
            if exc.err != -errno.EINVAL or not self._get_linear(target, level, domid, table, e):
                raise
            return

    def _get_linear(self, target: int, level: int, domid: int, table: int, e: int) -> bool:
        """Xen's get_lN_linear_pagetable for an entry naming another table: read-only, a validated Ln
        table of the domain, and XSA-240's rule (see `linear`). Takes a type reference of type Ln."""
        if e & _PAGE_RW or table < 0 or not 0 <= target < self.mem.nr_frames:
            return False
        if self.owner[target] != domid or self.type[target] != level or not self.count[target]:
            return False
        if self.linear.get(table, 0) < 0 or self.linear.get(target, 0) > 0:
            return False
        self.linear[table] = self.linear.get(table, 0) + 1
        self.linear[target] = self.linear.get(target, 0) - 1
        self.count[target] += 1
        return True

    def put_entry_ref(self, e: int, level: int, table: int = -1) -> None:
        target = entry_mfn(e)
        if level == PGT_l1:
            if e & _PAGE_RW:
                self.put_type(target)
            return
        if target == table:
            return
        if self.type[target] == level:  # a linear entry: a table is never both an Ln and an Ln-1
            for mfn, delta in ((table, -1), (target, 1)):
                left = self.linear.get(mfn, 0) + delta
                if left:
                    self.linear[mfn] = left
                else:
                    self.linear.pop(mfn, None)
        self.put_type(target)

    def recount_linear(self) -> None:
        """Rebuild `linear` from the validated tables (after a snapshot restore)."""
        self.linear = {}
        for mfn in range(self.mem.nr_frames):
            level = self.type[mfn]
            if not (PGT_l2 <= level <= PGT_l4 and self.count[mfn]):
                continue
            for i in range(512):
                e = _ENTRY.unpack_from(self.mem.mv, (mfn << 12) + i * 8)[0]
                target = entry_mfn(e)
                if (e & _PAGE_PRESENT and (level != PGT_l4 or self.guest_l4_slot(i)) and target != mfn
                        and self.type[target] == level):
                    self.linear[mfn] = self.linear.get(mfn, 0) + 1
                    self.linear[target] = self.linear.get(target, 0) - 1

    # -- entry updates (mmu_update, update_va_mapping) ------------------------------------------------------
    def update_entry(self, table_mfn: int, index: int, new: int, domid: int) -> None:
        """Write entry `index` of validated table `table_mfn`, moving references from old to new target."""
        level = self.type[table_mfn]
        ma = (table_mfn << 12) + index * 8
        old = self.mem.read_u64(ma)
        if level == PGT_l4 and not self.guest_l4_slot(index):
            raise PageTypeError(-errno.EINVAL, f"L4 slot {index} belongs to Xen")
        if new & _PAGE_PRESENT:
            # A 64-bit PV kernel runs in ring 3, so Xen forces USER on at every level (adjust_guest_lNe).
            new |= _PAGE_USER
            self.get_entry_ref(new, level, domid, table_mfn)
        if old & _PAGE_PRESENT:
            self.put_entry_ref(old, level, table_mfn)
        self.mem.write_u64(ma, new)

    # -- pinning ------------------------------------------------------------------------------------------
    def pin(self, mfn: int, t: int, domid: int) -> None:
        if not 0 <= mfn < self.mem.nr_frames or self.owner[mfn] != domid:
            raise PageTypeError(-errno.EINVAL, f"cannot pin mfn {mfn:#x}: not owned by d{domid}")
        if self.pinned[mfn]:
            raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is already pinned")
        self.get_type(mfn, t, domid)
        self.pinned[mfn] = True

    def unpin(self, mfn: int, domid: int) -> None:
        if not 0 <= mfn < self.mem.nr_frames or self.owner[mfn] != domid or not self.pinned[mfn]:
            raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is not pinned")
        self.pinned[mfn] = False
        self.put_type(mfn)

    def is_table(self, mfn: int) -> bool:
        return PGT_l1 <= self.type[mfn] <= PGT_l4 and self.count[mfn] > 0

    # -- saved state (hypervisor/save.py) -----------------------------------------------------------------
    def save(self) -> dict[str, bytes]:
        """Owner, type, count and pin of every frame, as binary sections."""
        return {"owner": pack_array("i", self.owner), "type": pack_array("B", self.type),
                "count": pack_array("I", self.count), "pinned": pack_array("B", [1 if p else 0 for p in self.pinned])}

    def restore(self, sections: dict[str, bytes], domid: int) -> None:
        """Take back a save() of a domain `domid` on the same machine layout (Xen's frames unchanged)."""
        n = self.mem.nr_frames
        owner = unpack_array("i", sections["owner"], n, "frames.owner")
        types = unpack_array("B", sections["type"], n, "frames.type")
        count = unpack_array("I", sections["count"], n, "frames.count")
        pinned = unpack_array("B", sections["pinned"], n, "frames.pinned")
        if any(o not in (OWNER_NONE, OWNER_XEN, domid) for o in set(owner)):
            raise StateError("frames.owner names a domain other than this one or Xen")
        if any(t not in TYPE_NAMES for t in set(types)) or any(p > 1 for p in set(pinned)):
            raise StateError("frames.type or frames.pinned holds an unknown value")
        xen_fresh = {i for i, o in enumerate(self.owner) if o == OWNER_XEN}
        if {i for i, o in enumerate(owner) if o == OWNER_XEN} != xen_fresh:
            raise StateError("the frames owned by Xen differ from this machine layout")
        self.owner[:] = owner
        self.type[:] = types
        self.count[:] = count
        self.pinned[:] = [bool(p) for p in pinned]
        self.recount_linear()


def audit(frames: FrameTable, domid: int, roots: list[tuple[int, int]]) -> list[str]:
    """Recount every type reference from scratch and compare with the bookkeeping (Xen's audit_domain).

    `roots` are the references held from outside any table: (mfn, type) for each pin, base pointer,
    registered vcpu_info frame and GDT frame. Returns a list of problems (empty when consistent)."""
    expected: dict[int, list[int]] = {}
    for mfn, t in roots:
        expected.setdefault(mfn, []).append(t)
    for mfn in range(frames.mem.nr_frames):
        if frames.count[mfn] and PGT_l1 <= frames.type[mfn] <= PGT_l4:
            level = frames.type[mfn]
            base = mfn << 12
            for i in range(512):
                e = _ENTRY.unpack_from(frames.mem.mv, base + i * 8)[0]
                if not e & _PAGE_PRESENT or (level == PGT_l4 and not frames.guest_l4_slot(i)):
                    continue
                if level == PGT_l1:
                    if e & _PAGE_RW:
                        expected.setdefault(entry_mfn(e), []).append(PGT_writable)
                elif entry_mfn(e) != mfn:       # a self-mapping (linear) entry holds no reference
                    target = entry_mfn(e)
                    expected.setdefault(target, []).append(level if frames.type[target] == level else level - 1)
    problems = []
    for mfn in range(frames.mem.nr_frames):
        refs = expected.get(mfn, [])
        if frames.count[mfn] != len(refs):
            problems.append(f"mfn {mfn:#x}: count {frames.count[mfn]} but {len(refs)} references")
        elif refs and any(t != frames.type[mfn] for t in refs):
            problems.append(f"mfn {mfn:#x}: type {TYPE_NAMES[frames.type[mfn]]} but referenced as "
                            f"{sorted({TYPE_NAMES[t] for t in refs})}")
        if refs and frames.owner[mfn] != domid:
            problems.append(f"mfn {mfn:#x}: referenced but owned by {frames.owner[mfn]}")
    return problems
