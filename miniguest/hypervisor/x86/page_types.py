"""Frame ownership and Xen's page-type system for PV page tables (xen/arch/x86/mm.c).

A PV guest runs on its own page tables, so Xen must make sure those tables can only map frames the domain
owns and that no frame is at once a page table and writable (else the guest could edit its tables behind
Xen's back and map anything). Every machine frame has, as in Xen's struct page_info:
- an owner (a domain, DOMID_XEN, or none: a free frame), and whether it is a Xen-heap page shared with the
  domain (shared_info, the grant-table frames: share_xen_page_with_guest gives them a permanent writable type
  reference, so they can never become page tables);
- a type (none, writable, L1..L4, segment descriptors) with a type count. The type changes only when the
  count is 0 (_get_page_type); a writable mapping (an L1 entry with RW) holds a PGT_writable_page reference,
  a validated Ln table holds an Ln-1 reference on each table it maps;
- PGT_validated: a page table's entries have all been checked (promote_lN_table), and the references they
  hold are taken. While a frame is being validated it already carries its new type with count 1 and no
  PGT_validated, so a reference of another type taken during its own validation -- a table that maps itself
  writable, directly or one level down -- fails as on Xen. When the last reference goes, a page table is
  devalidated (demote_lN_table) and releases what its entries held. (Xen's PGT_partial state, left by a
  preempted or failed validation, is never observable here: validation is not preempted, and a failure
  undoes the references taken so far within the same hypercall, as Xen's continuation does through
  put_old_guest_table.)
- PGT_pinned (MMUEXT_PIN_Ln_TABLE holds one reference), and linear_pt_count for linear page tables.

Per-frame state lives in compact arrays backed by anonymous memory, so frames nobody touches cost no host
memory (zero pages), as the machine RAM itself does.

Errnos follow Xen: get_page_from_l1e answers -EINVAL for disallowed flags, -EPERM for a frame outside RAM
(-EINVAL for INVALID_MFN), -EBUSY for a frame the domain does not own or cannot map writable;
get_page_from_lNe / get_page_and_type_from_mfn answer -EINVAL for a frame the domain does not own or one of
the wrong type.
"""
from __future__ import annotations

import mmap
import re
import struct
from array import array
from functools import cache
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from miniguest.abi import errno
from miniguest.abi.arch_x86 import (HYPERVISOR_L4_FIRST, HYPERVISOR_L4_LAST, PTE_ADDR_MASK, _PAGE_ACCESSED,
                                    _PAGE_DIRTY, _PAGE_GLOBAL, _PAGE_NX, _PAGE_PAT, _PAGE_PCD, _PAGE_PRESENT,
                                    _PAGE_PSE, _PAGE_PWT, _PAGE_RW, _PAGE_USER)
from miniguest.hypervisor.ram import MachineMemory
from miniguest.hypervisor.save import StateError

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain

# Owners.
OWNER_NONE = -1
OWNER_XEN = 0x7FF2          # DOMID_XEN

# Page types (Xen's PGT_*_page_table, PGT_writable_page, PGT_seg_desc_page).
PGT_none = 0
PGT_l1 = 1
PGT_l2 = 2
PGT_l3 = 3
PGT_l4 = 4
PGT_writable = 7
PGT_seg_desc = 8
TYPE_NAMES = {PGT_none: "none", PGT_l1: "L1", PGT_l2: "L2", PGT_l3: "L3", PGT_l4: "L4",
              PGT_writable: "writable", PGT_seg_desc: "seg_desc"}

# Per-frame flags (Xen keeps the first two in type_info, the last in count_info).
PGT_validated = 0x01
PGT_pinned = 0x02
PGC_xen_heap = 0x04
FLAG_BITS = PGT_validated | PGT_pinned | PGC_xen_heap

_FILL_CHUNK = 1 << 15            # frames per slice when filling the owner array
TYPE_COUNT_MAX = 0xFFFFFFFF      # our PGT_count_mask: one more reference is refused as an overflow (-EINVAL)
LINEAR_MAX = 0x7FFF              # linear_pt_count is an int16_t in Xen too
PADDR_MASK = (1 << 52) - 1
INVALID_MFN = PADDR_MASK >> 12   # get_page_from_l1e answers -EINVAL for it rather than -EPERM

# Flags a PV guest without I/O privileges may not set (Xen's base_disallow_mask): everything but present,
# RW, user, accessed, dirty, the available bits and NX -- i.e. the caching attributes everywhere, PSE above
# L1 and GLOBAL above L1 (L1_DISALLOW_MASK allows GLOBAL).
L1_DISALLOW = _PAGE_PWT | _PAGE_PCD | _PAGE_PAT
UPPER_DISALLOW = _PAGE_PWT | _PAGE_PCD | _PAGE_PSE | _PAGE_GLOBAL
# Flags the guest may change without the entry being re-validated (FASTPATH_FLAG_WHITELIST; with linear page
# tables allowed the same list holds for L2-L4): NX, the available bits, GLOBAL, dirty, accessed, user.
_AVAIL = 0xE00
_AVAIL_HIGH = 0x7FF << 52
FASTPATH_WHITELIST = _PAGE_NX | _AVAIL_HIGH | _AVAIL | _PAGE_GLOBAL | _PAGE_DIRTY | _PAGE_ACCESSED | _PAGE_USER
_FASTPATH_COMPARE = ((1 << 64) - 1) & ~FASTPATH_WHITELIST
_TABLE = struct.Struct("<512Q")
_ENTRY = struct.Struct("<Q")


class PageTypeError(Exception):
    """A page-table operation Xen would refuse; `err` is the negative errno to return."""

    def __init__(self, err: int, why: str) -> None:
        super().__init__(why)
        self.err = err


def entry_mfn(entry: int) -> int:
    return (entry & PTE_ADDR_MASK) >> 12


def guest_l4_slot(index: int) -> bool:
    """Xen's is_guest_l4_slot for a 64-bit PV domain: slots 256-271 are Xen's."""
    return not HYPERVISOR_L4_FIRST <= index <= HYPERVISOR_L4_LAST


def adjust_guest_entry(e: int, level: int) -> int:
    """Xen's adjust_guest_lNe for a 64-bit PV domain (whose kernel runs in ring 3): USER at every level,
    and ACCESSED on L4 entries."""
    if not e & _PAGE_PRESENT:
        return e
    if level == PGT_l4:
        return e | _PAGE_USER | _PAGE_ACCESSED
    return e | _PAGE_USER


def _zeroed(typecode: str, n: int) -> memoryview:
    """n zeroed items of an array typecode, in anonymous memory (untouched pages cost nothing)."""
    size = array(typecode).itemsize * max(n, 1)
    return memoryview(mmap.mmap(-1, size)).cast(typecode)


class FrameTable:
    """Owner, type, type count, flags and linear-table count of every machine frame."""

    SECTIONS = ("owner", "type", "count", "flags", "linear")
    _TYPECODES = {"owner": "h", "type": "B", "count": "I", "flags": "B", "linear": "h"}

    def __init__(self, mem: MachineMemory) -> None:
        n = mem.nr_frames
        self.mem = mem
        self.nr_frames = n
        self.owner = _zeroed("h", n)
        self.assign_range(0, n, OWNER_NONE)
        self.type = _zeroed("B", n)
        self.count = _zeroed("I", n)
        self.flags = _zeroed("B", n)
        # Xen's linear_pt_count: > 0, how many linear entries this table holds; < 0, how many linear entries
        # of other tables refer to it (XSA-240: a table is never both, so linear tables cannot form cycles).
        self.linear = _zeroed("h", n)
        # Filled by the hypervisor: writes Xen's own slots into a freshly validated L4 (init_xen_l4_slots).
        self.install_xen_l4_slots: Optional[Callable[[int], None]] = None

    # -- queries ------------------------------------------------------------------------------------------
    def valid(self, mfn: int) -> bool:
        return 0 <= mfn < self.nr_frames

    def owned_by(self, mfn: int, domid: int) -> bool:
        return 0 <= mfn < self.nr_frames and self.owner[mfn] == domid

    def is_pinned(self, mfn: int) -> bool:
        return bool(self.flags[mfn] & PGT_pinned)

    def is_validated(self, mfn: int) -> bool:
        return bool(self.flags[mfn] & PGT_validated)

    def is_xen_heap(self, mfn: int) -> bool:
        return bool(self.flags[mfn] & PGC_xen_heap)

    def is_table(self, mfn: int) -> bool:
        """A validated page table with references (what Xen's page_lock accepts, of a table type)."""
        return PGT_l1 <= self.type[mfn] <= PGT_l4 and self.count[mfn] > 0 and bool(self.flags[mfn] & PGT_validated)

    def lockable(self, mfn: int) -> bool:
        """Xen's page_lock succeeds: validated and referenced."""
        return self.count[mfn] > 0 and bool(self.flags[mfn] & PGT_validated)

    def frames_with_flag(self, flag: int) -> list[int]:
        return _positions(self.flags, [v for v in range(256) if v & flag])

    def frames_of_type(self, *types: int) -> list[int]:
        """Frames whose type is one of `types` (referenced or not)."""
        return _positions(self.type, types)

    def referenced_frames(self) -> list[int]:
        """Frames with a non-zero type count."""
        return sorted({p >> 2 for p in _positions(self.count, range(1, 256))})

    def pinned_frames(self) -> list[int]:
        return self.frames_with_flag(PGT_pinned)

    def frames_owned_by(self, domid: int) -> list[int]:
        return [mfn for mfn, o in enumerate(self.owner.tolist()) if o == domid]

    # -- ownership: assign_pages, free_domheap_pages, share_xen_page_with_guest ---------------------------
    def assign(self, mfn: int, owner: int) -> None:
        """Give a frame to an owner (a domain, or Xen) with no type, no references, no flags."""
        self.owner[mfn] = owner
        self.type[mfn] = PGT_none
        self.count[mfn] = 0
        self.flags[mfn] = 0
        self.linear[mfn] = 0

    def assign_range(self, first: int, end: int, owner: int) -> None:
        """assign() for the fresh frames [first, end) (at domain construction), a chunk at a time: no
        temporary as large as the range."""
        chunk = array("h", [owner]) * min(_FILL_CHUNK, max(end - first, 0))
        for start in range(first, end, _FILL_CHUNK):
            stop = min(end, start + _FILL_CHUNK)
            self.owner[start:stop] = chunk[:stop - start]

    def release(self, mfn: int) -> None:
        """The frame goes back to the free pool."""
        self.assign(mfn, OWNER_NONE)

    def share_xen_page(self, mfn: int, domid: int) -> None:
        """Xen's share_xen_page_with_guest(SHARE_rw): a Xen-heap page the domain may map, held by Xen for good
        with a validated writable type reference, so it can never take a page-table type."""
        self.owner[mfn] = domid
        self.type[mfn] = PGT_writable
        self.count[mfn] = 1
        self.flags[mfn] = PGT_validated | PGC_xen_heap
        self.linear[mfn] = 0

    # -- type references: Xen's _get_page_type / _put_page_type --------------------------------------------
    def get_type(self, mfn: int, t: int, domid: int) -> None:
        """Take a type reference of type t on a frame owned by domid (Xen's get_page_and_type_from_mfn: a
        frame the domain does not own, or of another type, is -EINVAL). A page table is validated when its
        count goes from 0 to 1."""
        if not 0 <= mfn < self.nr_frames or self.owner[mfn] != domid:
            raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is not owned by d{domid}")
        self._get_page_type(mfn, t)

    def _get_page_type(self, mfn: int, t: int) -> None:
        count = self.count[mfn]
        if count >= TYPE_COUNT_MAX:
            raise PageTypeError(-errno.EINVAL, f"type count overflow on mfn {mfn:#x}")
        if count:
            if self.type[mfn] != t:
                raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is in use as {TYPE_NAMES[self.type[mfn]]}, "
                                                   f"not {TYPE_NAMES[t]}")
            if not self.flags[mfn] & PGT_validated:
                # Only a frame whose own validation is under way is referenced but not validated (Xen would
                # wait for the other CPU; here it can only be a reference the validation itself asks for).
                raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is being validated as {TYPE_NAMES[t]}")
            self.count[mfn] = count + 1
            return
        # Typeref 0 -> 1: the type may change; a change clears PGT_validated.
        if self.type[mfn] != t:
            self.type[mfn] = t
            self.flags[mfn] &= ~PGT_validated
        self.count[mfn] = 1
        if self.flags[mfn] & PGT_validated:
            return
        if not PGT_l1 <= t <= PGT_l4:
            self.flags[mfn] |= PGT_validated      # writable and descriptor pages: nothing to audit here
            return
        # The frame now carries type t with one reference and no PGT_validated while its entries are checked.
        self.linear[mfn] = 0
        try:
            self._promote(mfn, t)
        except PageTypeError:
            self.type[mfn] = PGT_none             # validate_page's failure: type_info = 0
            self.count[mfn] = 0
            self.flags[mfn] &= ~(PGT_validated | PGT_pinned)
            raise
        self.flags[mfn] |= PGT_validated

    def put_type(self, mfn: int, ptpg: int = -1) -> None:
        """Drop a type reference (Xen's _put_page_type); `ptpg` is the table whose entry held it, if any (a
        reference between two tables of the same level is a linear one). A page table losing its last
        reference is devalidated."""
        count = self.count[mfn]
        if not count:
            raise RuntimeError(f"type count underflow on mfn {mfn:#x}")
        t = self.type[mfn]
        linear = ptpg >= 0 and PGT_l2 <= t <= PGT_l4 and self.type[ptpg] == t
        if count == 1 and PGT_l1 <= t <= PGT_l4 and self.flags[mfn] & PGT_validated:
            self.flags[mfn] &= ~PGT_validated     # the count stays 1 while the entries are released
            self._demote(mfn, t)
        if linear:
            self.linear[mfn] += 1                 # dec_linear_uses
            self.linear[ptpg] -= 1                # dec_linear_entries
        self.count[mfn] = count - 1

    # -- table validation: promote_lN_table / demote_lN_table ----------------------------------------------
    def _promote(self, mfn: int, t: int) -> None:
        mem = self.mem
        base = mfn << 12
        domid = self.owner[mfn]
        entries = _TABLE.unpack_from(mem.mv, base)
        taken: list[int] = []
        for i, e in enumerate(entries):
            if not e & _PAGE_PRESENT or (t == PGT_l4 and not guest_l4_slot(i)):
                continue
            try:
                self.get_entry_ref(e, t, domid, mfn)
            except PageTypeError as exc:
                for done in reversed(taken):
                    self.put_entry_ref(done, t, mfn)
                raise PageTypeError(exc.err, f"L{t} mfn {mfn:#x} slot {i:#x}: {exc}") from None
            adjusted = adjust_guest_entry(e, t)
            if adjusted != e:
                _ENTRY.pack_into(mem.mv, base + i * 8, adjusted)
            taken.append(adjusted)
        if t == PGT_l4 and self.install_xen_l4_slots is not None:
            self.install_xen_l4_slots(mfn)

    def _demote(self, mfn: int, t: int) -> None:
        entries = _TABLE.unpack_from(self.mem.mv, mfn << 12)
        for i, e in enumerate(entries):
            if e & _PAGE_PRESENT and (t != PGT_l4 or guest_l4_slot(i)):
                self.put_entry_ref(e, t, mfn)

    # -- entries: get_page_from_lNe / put_page_from_lNe ----------------------------------------------------
    def get_entry_ref(self, e: int, level: int, domid: int, table: int = -1) -> None:
        """The references a present entry of a level-`level` table holds (Xen's get_page_from_lNe)."""
        target = entry_mfn(e)
        if level == PGT_l1:
            self.get_page_from_l1e(e, domid)
            return
        if e & UPPER_DISALLOW:
            raise PageTypeError(-errno.EINVAL, f"bad L{level} flags {e & UPPER_DISALLOW:#x}")
        try:
            self.get_type(target, level - 1, domid)
        except PageTypeError as exc:
            if exc.err != -errno.EINVAL or not self._get_linear(e, target, level, domid, table):
                raise

    def get_page_from_l1e(self, e: int, domid: int) -> None:
        target = entry_mfn(e)
        if e & L1_DISALLOW:
            raise PageTypeError(-errno.EINVAL, f"bad L1 flags {e & L1_DISALLOW:#x}")
        if target >= self.nr_frames:
            if target == INVALID_MFN:
                raise PageTypeError(-errno.EINVAL, "INVALID_MFN in an L1 entry")
            raise PageTypeError(-errno.EPERM, f"mfn {target:#x} is not RAM (MMIO mapping not permitted)")
        if self.owner[target] != domid:
            raise PageTypeError(-errno.EBUSY, f"mfn {target:#x} is not owned by d{domid}")
        if e & _PAGE_RW:
            try:
                self._get_page_type(target, PGT_writable)
            except PageTypeError as exc:
                raise PageTypeError(-errno.EBUSY, f"cannot map mfn {target:#x} writable: {exc}") from None

    def _get_linear(self, e: int, target: int, level: int, domid: int, table: int) -> bool:
        """Xen's get_lN_linear_pagetable: a read-only Ln entry may map its own table (no reference) or another
        validated Ln table of the domain (a type reference of type Ln), under XSA-240's rule (`linear`)."""
        if e & _PAGE_RW or table < 0:
            return False
        if target == table:
            return True
        if self.owner[table] != domid or not self.owned_by(target, domid):
            return False
        lin = self.linear
        if not 0 <= lin[table] < LINEAR_MAX or not -LINEAR_MAX <= lin[target] <= 0:
            return False
        if (self.type[target] != level or not self.flags[target] & PGT_validated
                or not 0 < self.count[target] < TYPE_COUNT_MAX):
            return False
        lin[table] += 1
        lin[target] -= 1
        self.count[target] += 1
        return True

    def put_entry_ref(self, e: int, level: int, table: int = -1) -> None:
        """Release what a present entry held (Xen's put_page_from_lNe)."""
        target = entry_mfn(e)
        if level == PGT_l1:
            if e & _PAGE_RW and target < self.nr_frames:
                self.put_type(target)
            return
        if target == table:
            return                      # a table mapping itself holds no reference
        self.put_type(target, table)

    # -- entry updates: mod_lN_entry (mmu_update, update_va_mapping, grant mappings) ----------------------
    def update_entry(self, table_mfn: int, index: int, new: int, domid: int, preserve_ad: bool = False) -> None:
        """Write entry `index` of validated table `table_mfn` (Xen's mod_lN_entry): the new entry's references
        are taken before the old entry's are released; an entry that changes only in flags the guest may
        change keeps its references (the fast path)."""
        level = self.type[table_mfn]
        if level == PGT_l4 and not guest_l4_slot(index):
            raise PageTypeError(-errno.EINVAL, f"L4 slot {index} belongs to Xen")
        ma = (table_mfn << 12) + index * 8
        mv = self.mem.mv
        old = _ENTRY.unpack_from(mv, ma)[0]
        if new & _PAGE_PRESENT:
            disallow = L1_DISALLOW if level == PGT_l1 else UPPER_DISALLOW
            if new & disallow:
                raise PageTypeError(-errno.EINVAL, f"bad L{level} flags {new & disallow:#x}")
            new = adjust_guest_entry(new, level)
            if preserve_ad:
                new |= old & (_PAGE_ACCESSED | _PAGE_DIRTY)
            if not (old ^ new) & _FASTPATH_COMPARE:
                _ENTRY.pack_into(mv, ma, new)
                return
            self.get_entry_ref(new, level, domid, table_mfn)
        elif preserve_ad:
            new |= old & (_PAGE_ACCESSED | _PAGE_DIRTY)
        _ENTRY.pack_into(mv, ma, new)
        if old & _PAGE_PRESENT:
            self.put_entry_ref(old, level, table_mfn)

    def ptwr_update(self, table_mfn: int, index: int, new: int, domid: int) -> None:
        """An emulated store into L1 table `table_mfn` (ro_page_fault.py, Xen's ptwr_emulated_update): the
        new entry is checked as get_page_from_l1e checks it and adjusted (adjust_guest_l1e), written as the
        guest gave it (no preserve_ad, no fast path), then the old entry's references are dropped."""
        ma = (table_mfn << 12) + index * 8
        mv = self.mem.mv
        old = _ENTRY.unpack_from(mv, ma)[0]
        if new & _PAGE_PRESENT:
            self.get_page_from_l1e(new, domid)
            new = adjust_guest_entry(new, PGT_l1)
        _ENTRY.pack_into(mv, ma, new)
        if old & _PAGE_PRESENT:
            self.put_entry_ref(old, PGT_l1, table_mfn)

    # -- pinning: MMUEXT_PIN_Ln_TABLE / MMUEXT_UNPIN_TABLE --------------------------------------------------
    def pin(self, mfn: int, t: int, domid: int) -> None:
        if not self.owned_by(mfn, domid):
            raise PageTypeError(-errno.EINVAL, f"cannot pin mfn {mfn:#x}: not owned by d{domid}")
        self._get_page_type(mfn, t)
        if self.flags[mfn] & PGT_pinned:
            self.put_type(mfn)
            raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is already pinned")
        self.flags[mfn] |= PGT_pinned

    def unpin(self, mfn: int, domid: int) -> None:
        if not self.owned_by(mfn, domid):
            raise PageTypeError(-errno.EINVAL, f"cannot unpin mfn {mfn:#x}: not owned by d{domid}")
        if not self.flags[mfn] & PGT_pinned:
            raise PageTypeError(-errno.EINVAL, f"mfn {mfn:#x} is not pinned")
        self.flags[mfn] &= ~PGT_pinned
        self.put_type(mfn)

    # -- saved state (hypervisor/save.py) ------------------------------------------------------------------
    def save(self) -> dict[str, bytes]:
        """The per-frame state, one little-endian array per field."""
        out = {}
        for name in self.SECTIONS:
            a = array(self._TYPECODES[name], getattr(self, name).tobytes())
            if _BIG_ENDIAN:
                a.byteswap()
            out[name] = a.tobytes()
        return out

    def restore(self, state: dict[str, Optional[bytes]], domid: int) -> None:
        """Load saved per-frame state after checking it could be this machine's: the right sizes, owners
        that are this domain, Xen or none, known types and flags, and Xen's frames where they are now.
        Raises StateError (nothing is changed then). Whether the references add up is the audit's job
        (audit_domain, which Domain.restore runs once the vCPUs are back)."""
        arrays = {}
        for name in self.SECTIONS:
            data = state.get(name)
            a = array(self._TYPECODES[name])
            if not isinstance(data, (bytes, bytearray)) or len(data) != a.itemsize * self.nr_frames:
                raise StateError(f"section frames.{name} is missing or does not hold {self.nr_frames} entries")
            a.frombytes(bytes(data))
            if _BIG_ENDIAN:
                a.byteswap()
            arrays[name] = a
        owners = set(arrays["owner"])
        if not owners <= {OWNER_NONE, OWNER_XEN, domid}:
            raise StateError("frames.owner names a domain other than this one or Xen")
        if not set(arrays["type"]) <= set(TYPE_NAMES) or any(f & ~FLAG_BITS for f in set(arrays["flags"])):
            raise StateError("frames.type or frames.flags holds an unknown value")
        now = self.owner.tolist()
        if [i for i, o in enumerate(arrays["owner"]) if o == OWNER_XEN] != \
                [i for i, o in enumerate(now) if o == OWNER_XEN]:
            raise StateError("the frames owned by Xen differ from this machine layout")
        for name in self.SECTIONS:
            getattr(self, name)[:] = arrays[name]


_BIG_ENDIAN = array("H", [1]).tobytes() != b"\x01\x00"


@cache
def _byte_class(key: tuple[int, ...]) -> "re.Pattern[bytes]":
    return re.compile(b"[" + b"".join(re.escape(bytes([v])) for v in key) + b"]")


def _positions(view: memoryview, values: Iterable[int]) -> list[int]:
    """Byte offsets in `view` whose byte is one of `values` (a regex scan: C speed over big tables)."""
    return [m.start() for m in _byte_class(tuple(sorted(set(values)))).finditer(view.cast("B"))]


# -- the audit --------------------------------------------------------------------------------------------
def type_roots(dom: "Domain") -> list[tuple[int, int]]:
    """The type references held from outside any page table (mfn, type): pins, each vCPU's kernel and user
    base pointers, a registered vcpu_info, GDT frames, the PIRQ EOI bitmap frame, writable device mappings
    of grants, the permanent
    references of Xen-heap pages, and frames dom0 maps (a foreign writable mapping holds a writable
    reference, as in Xen's get_page_from_l1e)."""
    frames = dom.frames
    roots = [(mfn, frames.type[mfn]) for mfn in frames.pinned_frames()]
    roots += [(mfn, PGT_writable) for mfn in frames.frames_with_flag(PGC_xen_heap)]   # all shared SHARE_rw
    for v in dom.vcpus:
        if v.guest_table:
            roots.append((v.guest_table, PGT_l4))
        if v.guest_table_user:
            roots.append((v.guest_table_user, PGT_l4))
        if v.vcpu_info_view is not None:
            roots.append((v.vcpu_info_mfn, PGT_writable))
        roots.extend((mfn, PGT_seg_desc) for mfn in v.gdt_frames)
    for m in dom.grants.maptrack:
        if m is not None and m.flags & 1 and not m.flags & 4:     # GNTMAP_device_map, not GNTMAP_readonly
            roots.append((m.mfn, PGT_writable))
    for _, writable, mfn in dom.grants.dom0_pins.values():
        roots.extend([(mfn, PGT_writable)] * writable)         # dom0's writable grant mappings
    roots.extend((mfn, PGT_writable) for mfn in sorted(dom.foreign_mapped))
    if getattr(dom, "pirq_eoi_mfn", None) is not None:
        roots.append((dom.pirq_eoi_mfn, PGT_writable))            # PHYSDEVOP_pirq_eoi_gmfn's reference
    return roots


def audit(frames: FrameTable, domid: int, roots: Iterable[tuple[int, int]]) -> list[str]:
    """Recount every type reference from scratch and compare with the bookkeeping (Xen's audit_domain):
    counts, types, PGT_validated, linear_pt_count, owners. `roots` are the references held from outside
    any table. Returns the problems found (empty when consistent)."""
    n = frames.nr_frames
    expected: dict[int, list[int]] = {}
    for mfn, t in roots:
        expected.setdefault(mfn, []).append(t)
    types = frames.type
    counts = frames.count
    flags = frames.flags
    linear: dict[int, int] = {}
    problems: list[str] = []
    for mfn in frames.frames_of_type(PGT_l1, PGT_l2, PGT_l3, PGT_l4):
        level = types[mfn]
        if not counts[mfn]:
            continue
        if not flags[mfn] & PGT_validated:
            problems.append(f"mfn {mfn:#x}: L{level} with {counts[mfn]} references is not validated")
            continue
        for i, e in enumerate(_TABLE.unpack_from(frames.mem.mv, mfn << 12)):
            if not e & _PAGE_PRESENT or (level == PGT_l4 and not guest_l4_slot(i)):
                continue
            target = entry_mfn(e)
            if level == PGT_l1:
                if e & _PAGE_RW:
                    expected.setdefault(target, []).append(PGT_writable)
                continue
            if target == mfn:
                continue                          # a table mapping itself holds no reference
            if target < n and types[target] == level:
                expected.setdefault(target, []).append(level)
                linear[mfn] = linear.get(mfn, 0) + 1
                linear[target] = linear.get(target, 0) - 1
            else:
                expected.setdefault(target, []).append(level - 1)
    for mfn in sorted(set(expected) | set(frames.referenced_frames())):
        refs = expected.get(mfn, [])
        if not 0 <= mfn < n:
            problems.append(f"mfn {mfn:#x}: referenced but not a machine frame")
            continue
        if counts[mfn] != len(refs):
            problems.append(f"mfn {mfn:#x}: count {counts[mfn]} but {len(refs)} references")
        elif refs and any(t != types[mfn] for t in refs):
            problems.append(f"mfn {mfn:#x}: type {TYPE_NAMES.get(types[mfn], types[mfn])} but referenced as "
                            f"{sorted({TYPE_NAMES.get(t, t) for t in refs})}")
        if refs and frames.owner[mfn] != domid:
            problems.append(f"mfn {mfn:#x}: referenced but owned by {frames.owner[mfn]}")
    stored = {mfn: frames.linear[mfn] for mfn in sorted({p >> 1 for p in _positions(frames.linear, range(1, 256))})}
    if stored != linear:
        problems.append(f"linear_pt_count {stored} but the tables give {linear}")
    return problems


def audit_mappings(frames: FrameTable, domid: int, roots: Iterable[tuple[int, int]],
                   granted: Iterable[int] = ()) -> list[str]:
    """What the guest (always at CPL3) can reach through the page tables: from every root table (pins and
    base pointers, at their level) follow the present entries that allow user access, as the CPU would --
    linear entries included, so a table is also walked at the levels below its own. At each leaf check that
    a user-writable mapping never reaches a page table, a descriptor page or a frame that is not the
    domain's, that it holds a writable type reference, and that a guest entry maps only frames the domain
    owns or has mapped by grant. Xen's own L4 slots are walked too (their frames are Xen's: only reads)."""
    n = frames.nr_frames
    owner = frames.owner
    types = frames.type
    counts = frames.count
    granted = set(granted)
    problems: list[str] = []
    seen: set[tuple[int, int, bool]] = set()
    todo = [(mfn, level, True) for mfn, level in roots if PGT_l1 <= level <= PGT_l4 and 0 <= mfn < n]
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        mfn, level, rw = state
        table_l4 = types[mfn] == PGT_l4 and counts[mfn] > 0
        for i, e in enumerate(_TABLE.unpack_from(frames.mem.mv, mfn << 12)):
            if (e & (_PAGE_PRESENT | _PAGE_USER)) != _PAGE_PRESENT | _PAGE_USER:
                continue                          # not present, or not reachable from CPL3
            xen_entry = (table_l4 and not guest_l4_slot(i)) or owner[mfn] == OWNER_XEN
            target = entry_mfn(e)
            writable = rw and bool(e & _PAGE_RW)
            leaf = level == PGT_l1 or (level in (PGT_l2, PGT_l3) and e & _PAGE_PSE)
            if not leaf:
                if target >= n:
                    problems.append(f"mfn {mfn:#x} slot {i:#x} (as L{level}): table mfn {target:#x} is not RAM")
                else:
                    todo.append((target, level - 1, writable))
                continue
            if xen_entry and not writable:
                continue                          # Xen's own read-only mapping (the M2P): nothing to check
            span = 1 if level == PGT_l1 else 512 ** (level - 1)
            for f in range(target, target + span):
                where = f"mfn {mfn:#x} slot {i:#x} (as L{level}) maps mfn {f:#x}"
                if f >= n:
                    problems.append(f"{where}: not RAM")
                    break
                if not xen_entry and owner[f] != domid and f not in granted:
                    problems.append(f"{where}, owned by {owner[f]}")
                if writable:
                    if owner[f] != domid:
                        problems.append(f"{where} writable, owned by {owner[f]}")
                    elif types[f] != PGT_writable or not counts[f]:
                        problems.append(f"{where} writable with type {TYPE_NAMES.get(types[f], types[f])}, "
                                        f"count {counts[f]}")
    return problems


def audit_domain(dom: "Domain") -> list[str]:
    """Both audits for a domain: the reference recount and the reachable mappings."""
    roots = type_roots(dom)
    problems = audit(dom.frames, dom.domid, roots)
    granted = {m.mfn for m in dom.grants.maptrack if m is not None}      # (dom0's need no PTE of the guest)
    problems += audit_mappings(dom.frames, dom.domid, [(m, t) for m, t in roots if PGT_l1 <= t <= PGT_l4],
                               granted)
    return problems
