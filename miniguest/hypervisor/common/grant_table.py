"""grant_table_op, version 1: the grant table frames a guest maps and fills (Mini-OS's init_gnttab), and
mapping grants.

The frames are Xen's, shared with the domain (like shared_info): the domain may map them writable.
A domain may map the grants it gives itself (the only other domain, dom0, grants it nothing), as Xen's
map_grant_ref/unmap_common do for PV: host mappings by linear address or by PTE machine address
(GNTMAP_contains_pte), device mappings (the frame's bus address), read-only or writable. The grant entry
gets GTF_reading/GTF_writing while mapped. A writable host mapping's type reference is the one its PTE
holds in the FrameTable (so it follows the PTE wherever unmap_and_replace moves it); a writable device
mapping holds its own. Unmapping checks that the PTE still maps the frame with the grant's flags.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import errno
from miniguest.abi.xen import DOMID_SELF, HYPERVISOR_grant_table_op
from miniguest.hypervisor.decode import DecodeCtx, Decoded, domid, put_list
from miniguest.hypervisor.hypercall import Hypercall, SubOp, SubOps
from miniguest.hypervisor.ram import GuestFault, guest_range_ok
from miniguest.hypervisor.save import Fields, StateError
from miniguest.hypervisor.x86.mm import l1_entry_for
from miniguest.hypervisor.x86.page_types import PGT_l1, PGT_writable, PageTypeError

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_set_version = 8
GNTTABOP_get_version = 10
GNTTABOP_unmap_and_replace = 7
GNTTABOP_cache_flush = 12
GNTTABOP_ARG_SHIFT = 12
GNTTABOP_CMD_MASK = (1 << GNTTABOP_ARG_SHIFT) - 1
GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1
GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_contains_pte = 1 << 4
GTF_permit_access = 1
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
ENTRIES_PER_FRAME = 512
MAX_GRANT_FRAMES = 32
MAX_MAPTRACK = 1024
_PTE_P, _PTE_RW, _PTE_A, _PTE_D, _PTE_NX = 1, 2, 0x20, 0x40, 1 << 63
_PTE_IGNORED = _PTE_A | _PTE_D | 0xE00 | 4          # accessed/dirty/available (and the USER Xen adds)

_SETUP = struct.Struct("<H2xIh6xQ")        # dom, nr_frames, status, frame_list
_QUERY = struct.Struct("<H2xIIh2x")        # dom, nr_frames, max_nr_frames, status
_MAP = struct.Struct("<QIIHhIQ")           # host_addr, flags, ref, dom, status, handle, dev_bus_addr
_UNMAP = struct.Struct("<QQIh2x")          # host_addr, dev_bus_addr (unmap_and_replace: new_addr), handle, status
_ENTRY = struct.Struct("<HHI")             # grant_entry_v1: flags, domid, frame
# gnttab_copy: source and dest {u.ref/u.gmfn, domid, offset}, len, flags, status
_COPY = struct.Struct("<QHH4xQHH4xHHh2x")
_COPY_STATUS = 36


class GrantMap:
    """A maptrack entry: which grant a handle maps, how, and the frame the grant named when first mapped."""
    __slots__ = ("ref", "flags", "mfn")

    def __init__(self, ref: int, flags: int, mfn: int) -> None:
        self.ref, self.flags, self.mfn = ref, flags, mfn


class GrantTable:
    """One domain's grant table (Xen's struct grant_table): the frames that hold it, how many of them the guest
    has set up, and the maptrack of the grants mapped (by handle; None: a free handle)."""

    def __init__(self, frames: list[int]) -> None:
        self.frames = frames
        self.nr_frames = 0
        self.maptrack: list[Optional[GrantMap]] = []
        # dom0's mappings of this domain's grants (Host.map_grant_ref): ref -> [read-only pins, writable pins,
        # the frame pinned]. Xen keeps these pin counts in the granting domain's active entries.
        self.dom0_pins: dict[int, list[int]] = {}

    def dom0_mapped_frames(self) -> set[int]:
        return {pin[2] for pin in self.dom0_pins.values()}

    # -- saved state (hypervisor/save.py); the entries themselves are in the frames, in guest memory -------
    def save(self) -> dict:
        if any(m is not None for m in self.maptrack) or self.dom0_pins:
            raise StateError("the domain has grants mapped (the maptrack is not carried)")
        return {"grant_nr_frames": self.nr_frames}

    def restore(self, f: Fields) -> None:
        self.nr_frames = f.int("grant_nr_frames", 0, len(self.frames))
        self.maptrack = []


def _self(vcpu: "Vcpu", dom: int) -> bool:
    return dom in (DOMID_SELF, vcpu.domain.domid)


def _setup_table(vcpu: "Vcpu", uop: int, count: int) -> int:
    dom = vcpu.domain
    gt = dom.grants.frames
    for i in range(count):
        arg = uop + i * _SETUP.size
        d, nr, _, frame_list = _SETUP.unpack(vcpu.mem.read(arg, _SETUP.size))
        status = GNTST_okay
        if not _self(vcpu, d):
            status = GNTST_permission_denied
        elif nr > len(gt):
            status = GNTST_general_error
        else:
            dom.grants.nr_frames = max(dom.grants.nr_frames, nr)
            try:
                vcpu.mem.write(frame_list, struct.pack(f"<{nr}Q", *gt[:nr]))
            except GuestFault:
                status = GNTST_bad_virt_addr
        vcpu.mem.write(arg + 8, struct.pack("<h", status))
    return 0


def _query_size(vcpu: "Vcpu", uop: int, count: int) -> int:
    dom = vcpu.domain
    for i in range(count):
        arg = uop + i * _QUERY.size
        d = struct.unpack("<H", vcpu.mem.read(arg, 2))[0]
        status = GNTST_okay if _self(vcpu, d) else GNTST_bad_domain
        vcpu.mem.write(arg, _QUERY.pack(d, dom.grants.nr_frames, len(dom.grants.frames), status))
    return 0


def _get_version(vcpu: "Vcpu", uop: int, count: int) -> int:
    d = struct.unpack("<H", vcpu.mem.read(uop, 2))[0]
    if not _self(vcpu, d):
        return -errno.EPERM
    vcpu.mem.write(uop + 4, struct.pack("<I", 1))
    return 0


def _set_version(vcpu: "Vcpu", uop: int, count: int) -> int:
    # Xen's gnttab_set_version: only 1 and 2 are versions (else -EINVAL); this table is v1-only, so v2
    # answers as a Xen whose grant table max version is 1 does: -ENOSYS, "as before set_version was
    # introduced". The current version is written back in every case.
    version = struct.unpack("<I", vcpu.mem.read(uop, 4))[0]
    rc = 0 if version == 1 else -errno.ENOSYS if version == 2 else -errno.EINVAL
    vcpu.mem.write(uop, struct.pack("<I", 1))
    return rc


def _map_grant_ref(vcpu: "Vcpu", uop: int, count: int) -> int:
    for i in range(count):
        arg = uop + i * _MAP.size
        host_addr, flags, ref, d, _, _, _ = _MAP.unpack(vcpu.mem.read(arg, _MAP.size))
        status, handle, bus = _map_one(vcpu, host_addr, flags, ref, d)
        vcpu.mem.write(arg + 18, struct.pack("<hIQ", status, handle, bus))
    return 0


def _unmap(replace: bool) -> Callable[["Vcpu", int, int], int]:
    """unmap_grant_ref, or unmap_and_replace (whose second address is the replacement's, not dev_bus_addr)."""
    def handler(vcpu: "Vcpu", uop: int, count: int) -> int:
        for i in range(count):
            arg = uop + i * _UNMAP.size
            host_addr, second, handle, _ = _UNMAP.unpack(vcpu.mem.read(arg, _UNMAP.size))
            if replace:
                status = _unmap_one(vcpu, handle, host_addr, 0, second)
            else:
                status = _unmap_one(vcpu, handle, host_addr, second, None)
            vcpu.mem.write(arg + 20, struct.pack("<h", status))
        return 0
    return handler


def grant_table_op(vcpu: "Vcpu", cmd: int, uop: int, count: int) -> Optional[int]:
    cmd &= 0xFFFFFFFF
    count &= 0xFFFFFFFF
    # do_grant_table_op: a count that is negative as an int, or a command carrying GNTTABOP_ARG_MASK bits
    # (only cache_flush takes them), is -EINVAL before anything else.
    if count >= 1 << 31 or (cmd >> GNTTABOP_ARG_SHIFT and cmd & GNTTABOP_CMD_MASK != GNTTABOP_cache_flush):
        return -errno.EINVAL
    return SUBOPS.run(cmd, vcpu, uop, count)


def _copy(vcpu: "Vcpu", uop: int, count: int) -> int:
    if not guest_range_ok(uop, _COPY.size * count):
        return -errno.EFAULT
    return gnttab_copy(vcpu, uop, count)


def _setup_in(ctx: DecodeCtx) -> Decoded:
    dom, nr = ctx.unpack("<H2xI", ctx.args[1])
    return {"dom": domid(dom), "nr_frames": nr, "count": ctx.args[2] & 0xFFFFFFFF}


def _setup_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    _, nr, status, frame_list = ctx.unpack("<H2xIh6xQ", ctx.args[1])
    out: Decoded = {"status": status}
    if status == 0 and nr:
        frames, total = ctx.array(frame_list, nr, "<Q")
        put_list(out, "frames", [f[0] for f in frames], total)
    return out


def _query_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    _, nr, max_nr, status = ctx.unpack("<H2xIIh2x", ctx.args[1])
    return {"nr_frames": nr, "max_nr_frames": max_nr, "status": status}


def _copy_side(u: int, dom: int, offset: int, gref: bool) -> Decoded:
    return {"ref" if gref else "gmfn": u & 0xFFFFFFFF if gref else u, "dom": domid(dom), "offset": offset}


def _copy_in(ctx: DecodeCtx) -> Decoded:
    count = ctx.args[2] & 0x7FFFFFFF
    ops, total = ctx.array(ctx.args[1], count, _COPY.format)
    items = [{"source": _copy_side(su, sd, so, bool(fl & GNTCOPY_source_gref)),
              "dest": _copy_side(du, dd, do, bool(fl & GNTCOPY_dest_gref)), "len": ln}
             for su, sd, so, du, dd, do, ln, fl, _ in ops]
    return put_list({"count": count}, "ops", items, total)


def _copy_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    ops, total = ctx.array(ctx.args[1], ctx.args[2] & 0x7FFFFFFF, _COPY.format)
    return put_list({}, "status", [op[8] for op in ops], total)


# The sub-ops without a handler are Xen's, answered -ENOSYS (no transfer, no v2 status frames here).
SUBOPS = SubOps((
    SubOp(GNTTABOP_map_grant_ref, "map_grant_ref", _map_grant_ref),
    SubOp(GNTTABOP_unmap_grant_ref, "unmap_grant_ref", _unmap(False)),
    SubOp(GNTTABOP_setup_table, "setup_table", _setup_table, decode_in=_setup_in, decode_out=_setup_out),
    SubOp(GNTTABOP_dump_table, "dump_table"),
    SubOp(GNTTABOP_transfer, "transfer"),
    SubOp(GNTTABOP_copy, "copy", _copy, decode_in=_copy_in, decode_out=_copy_out),
    SubOp(GNTTABOP_query_size, "query_size", _query_size, decode_out=_query_out),
    SubOp(GNTTABOP_unmap_and_replace, "unmap_and_replace", _unmap(True)),
    SubOp(GNTTABOP_set_version, "set_version", _set_version),
    SubOp(9, "get_status_frames"),
    SubOp(GNTTABOP_get_version, "get_version", _get_version),
    SubOp(11, "swap_grant_ref"),
    SubOp(12, "cache_flush"),
))
HYPERCALLS = (Hypercall(HYPERVISOR_grant_table_op, "grant_table_op", grant_table_op, 3, subop_arg=0,
                        subops=SUBOPS),)


# -- mapping grants ---------------------------------------------------------------------------------------
def _entry_ma(dom, ref: int) -> int:
    return (dom.grants.frames[ref // ENTRIES_PER_FRAME] << 12) + (ref % ENTRIES_PER_FRAME) * _ENTRY.size


def _grant_pte(mfn: int, flags: int) -> int:
    """Xen's grant_to_pte_flags: present, accessed, dirty, no-execute, writable unless read-only."""
    pte = (mfn << 12) | _PTE_P | _PTE_A | _PTE_D | _PTE_NX
    return pte if flags & GNTMAP_readonly else pte | _PTE_RW


def _pte_slot(vcpu: "Vcpu", addr: int, by_pte: bool) -> tuple[int, int]:
    """(L1 mfn, index) of the PTE a host mapping uses: by linear address, or by its machine address."""
    dom = vcpu.domain
    if by_pte:
        if addr & 7:
            raise PageTypeError(GNTST_general_error, f"PTE address {addr:#x} is not aligned (XSA-227)")
        l1, index = addr >> 12, (addr & 0xFFF) >> 3
    else:
        if not guest_range_ok(addr, 1):
            raise PageTypeError(GNTST_general_error, f"{addr:#x} is not a guest address")
        l1, index = l1_entry_for(vcpu, addr)
    if l1 >= dom.mem.nr_frames or dom.frames.owner[l1] != dom.domid or dom.frames.type[l1] != PGT_l1 \
            or not dom.frames.count[l1]:
        raise PageTypeError(GNTST_general_error, f"the PTE for {addr:#x} is not in an L1 of the domain")
    return l1, index


def _set_entry_flags(dom, ref: int) -> None:
    """GTF_reading while any mapping of the grant is live, GTF_writing while a writable one is."""
    maps = [m for m in dom.grants.maptrack if m is not None and m.ref == ref]
    pins = dom.grants.dom0_pins.get(ref)
    ma = _entry_ma(dom, ref)
    flags = struct.unpack("<H", dom.mem.mv[ma:ma + 2])[0] & ~(GTF_reading | GTF_writing)
    if maps or pins:
        flags |= GTF_reading
    if any(not m.flags & GNTMAP_readonly for m in maps) or (pins and pins[1]):
        flags |= GTF_writing
    dom.mem.mv[ma:ma + 2] = struct.pack("<H", flags)


def _map_one(vcpu: "Vcpu", host_addr: int, flags: int, ref: int, d: int) -> tuple[int, int, int]:
    """One gnttab_map_grant_ref: (status, handle, dev_bus_addr)."""
    dom = vcpu.domain
    if not flags & (GNTMAP_device_map | GNTMAP_host_map):
        return GNTST_bad_gntref, 0, 0
    if d == 0:
        return GNTST_general_error, 0, 0     # dom0 exists but grants this domain nothing
    if d != dom.domid:
        return GNTST_bad_domain, 0, 0        # (DOMID_SELF too: rcu_lock_domain_by_id does not know it)
    if ref >= max(1, dom.grants.nr_frames) * ENTRIES_PER_FRAME:
        return GNTST_bad_gntref, 0, 0
    readonly = bool(flags & GNTMAP_readonly)
    eflags, edomid, frame = _ENTRY.unpack_from(dom.mem.mv, _entry_ma(dom, ref))
    pinned = [m for m in dom.grants.maptrack if m is not None and m.ref == ref]
    if not pinned and ((eflags & GTF_type_mask) != GTF_permit_access or edomid != dom.domid):
        return GNTST_general_error, 0, 0
    if not readonly and eflags & GTF_readonly:
        return GNTST_general_error, 0, 0     # write-pinning a read-only grant
    mfn = pinned[0].mfn if pinned else frame
    if mfn >= dom.mem.nr_frames or dom.frames.owner[mfn] != dom.domid:
        return GNTST_bad_page, 0, 0
    try:
        handle = dom.grants.maptrack.index(None)
    except ValueError:
        if len(dom.grants.maptrack) >= MAX_MAPTRACK:
            return GNTST_no_device_space, 0, 0
        handle = len(dom.grants.maptrack)
        dom.grants.maptrack.append(None)
    device_ref = False
    try:
        if flags & GNTMAP_device_map and not readonly:
            dom.frames.get_type(mfn, PGT_writable, dom.domid)
            device_ref = True
        if flags & GNTMAP_host_map:
            l1, index = _pte_slot(vcpu, host_addr, bool(flags & GNTMAP_contains_pte))
            dom.frames.update_entry(l1, index, _grant_pte(mfn, flags), dom.domid)
    except PageTypeError as e:
        if device_ref:
            dom.frames.put_type(mfn)
        dom.log_once(("gntmap", str(e)), f"map_grant_ref refused: {e}")
        return GNTST_general_error, 0, 0
    finally:
        vcpu.flush_tlb()
    dom.grants.maptrack[handle] = GrantMap(ref, flags & (GNTMAP_device_map | GNTMAP_host_map | GNTMAP_readonly |
                                                        GNTMAP_contains_pte), mfn)
    _set_entry_flags(dom, ref)
    return GNTST_okay, handle, mfn << 12


def _unmap_one(vcpu: "Vcpu", handle: int, host_addr: int, dev_bus_addr: int, new_addr: Optional[int]) -> int:
    """One unmap_grant_ref (new_addr None) or unmap_and_replace: the status."""
    dom = vcpu.domain
    m = dom.grants.maptrack[handle] if handle < len(dom.grants.maptrack) else None
    if m is None:
        return GNTST_bad_handle
    if dev_bus_addr and dev_bus_addr != m.mfn << 12:
        return GNTST_bad_dev_addr
    if host_addr and m.flags & GNTMAP_host_map:
        try:
            l1, index = _pte_slot(vcpu, host_addr, bool(m.flags & GNTMAP_contains_pte))
            pte = dom.mem.read_u64((l1 << 12) + index * 8)
            expected = _grant_pte(m.mfn, m.flags)
            if (pte ^ expected) & ~_PTE_IGNORED:
                raise PageTypeError(GNTST_general_error, f"the PTE {pte:#x} does not map the grant as it was "
                                                         f"mapped ({expected:#x})")
            replacement = 0
            if new_addr:
                nl1, nindex = _pte_slot(vcpu, new_addr, False)
                replacement = dom.mem.read_u64((nl1 << 12) + nindex * 8)
                dom.frames.update_entry(l1, index, replacement, dom.domid)
                dom.frames.update_entry(nl1, nindex, 0, dom.domid)
            else:
                dom.frames.update_entry(l1, index, 0, dom.domid)
        except PageTypeError as e:
            dom.log_once(("gntunmap", str(e)), f"unmap_grant_ref refused: {e}")
            return GNTST_general_error
        finally:
            vcpu.flush_tlb()
        m.flags &= ~GNTMAP_host_map
    if dev_bus_addr and m.flags & GNTMAP_device_map:
        if not m.flags & GNTMAP_readonly:
            dom.frames.put_type(m.mfn)
        m.flags &= ~GNTMAP_device_map
    if not m.flags & (GNTMAP_host_map | GNTMAP_device_map):
        dom.grants.maptrack[handle] = None
    _set_entry_flags(dom, m.ref)
    return GNTST_okay


# -- dom0 mapping a domain's grants: GNTTABOP_map_grant_ref / unmap_grant_ref issued by dom0 (Host) --------
class GrantError(Exception):
    """A grant dom0 cannot map; `status` is the GNTST_* Xen would return."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def map_for_dom0(dom, ref: int, readonly: bool, transient: bool = False) -> int:
    """Pin grant `ref` of `dom` for a mapping by dom0, as Xen's map_grant_ref checks it: the entry must grant
    access to dom0 (GTF_permit_access, domid 0), a writable mapping needs a writable grant, the frame must be
    the granting domain's. Returns the frame; the entry shows GTF_reading/GTF_writing while pinned.
    `transient`: acquired for a grant copy (acquire_grant_for_copy) and released before the guest runs
    again -- the checks and the type reference, but no pin and no flags the guest could never see set."""
    gt = dom.grants
    if not 0 <= ref < max(1, gt.nr_frames) * ENTRIES_PER_FRAME:
        raise GrantError(GNTST_bad_gntref, f"d{dom.domid} has no grant reference {ref}")
    eflags, edomid, frame = _ENTRY.unpack_from(dom.mem.mv, _entry_ma(dom, ref))
    pin = gt.dom0_pins.get(ref)
    if pin is None and ((eflags & GTF_type_mask) != GTF_permit_access or edomid != 0):
        raise GrantError(GNTST_general_error, f"d{dom.domid} grant {ref} does not grant access to dom0")
    if not readonly and eflags & GTF_readonly:
        raise GrantError(GNTST_general_error, f"d{dom.domid} grant {ref} is read-only")
    mfn = pin[2] if pin is not None else frame
    if mfn >= dom.mem.nr_frames or dom.frames.owner[mfn] != dom.domid:
        raise GrantError(GNTST_bad_page, f"d{dom.domid} grant {ref} names a frame it does not own")
    if not readonly:
        # A writable host mapping holds a writable type reference (gnttab_host_mapping_get_page_type): a
        # page table, a descriptor page, is never mapped writable by dom0 (could_not_pin).
        try:
            dom.frames.get_type(mfn, PGT_writable, dom.domid)
        except PageTypeError as e:
            raise GrantError(GNTST_general_error, f"d{dom.domid} grant {ref}: cannot map mfn {mfn:#x} "
                                                  f"writable: {e}") from None
    if transient:
        return mfn
    if pin is None:
        pin = gt.dom0_pins[ref] = [0, 0, mfn]
    pin[0 if readonly else 1] += 1
    _set_entry_flags(dom, ref)
    return mfn


def release_transient(dom, mfn: int, readonly: bool) -> None:
    """The end of a grant copy's use of a frame acquired with map_for_dom0(..., transient=True)."""
    if not readonly:
        dom.frames.put_type(mfn)


def unmap_for_dom0(dom, ref: int, readonly: bool) -> None:
    """Drop one dom0 pin taken by map_for_dom0."""
    pin = dom.grants.dom0_pins[ref]
    pin[0 if readonly else 1] -= 1
    if not readonly:
        dom.frames.put_type(pin[2])
    if not pin[0] and not pin[1]:
        del dom.grants.dom0_pins[ref]
    _set_entry_flags(dom, ref)


# -- copying through grants (gnttab_copy) ------------------------------------------------------------------
class _CopyError(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def gnttab_copy(vcpu: "Vcpu", uop: int, count: int) -> int:
    """GNTTABOP_copy: each op copies `len` bytes between two frames, each named by a grant reference or (for
    DOMID_SELF only) a machine frame number, and gets its own status; a failing op does not stop the batch.
    The hypercall returns 0, or -EFAULT when an op cannot be read or its status written."""
    dom = vcpu.domain
    for i in range(count):
        arg = uop + i * _COPY.size
        try:
            op = _COPY.unpack(vcpu.mem.read(arg, _COPY.size))
        except GuestFault:
            return -errno.EFAULT
        try:
            _copy_one(vcpu, *op[:8])
            status = GNTST_okay
        except _CopyError as e:
            dom.log_once(("gntcopy", e.status, str(e)), f"grant copy refused: {e}")
            status = e.status
        try:
            vcpu.mem.write(arg + _COPY_STATUS, struct.pack("<h", status))
        except GuestFault:
            return -errno.EFAULT
    return 0


def _copy_one(vcpu: "Vcpu", src_ptr: int, src_dom: int, src_off: int, dst_ptr: int, dst_dom: int, dst_off: int,
              length: int, flags: int) -> None:
    """Xen's gnttab_copy_one: lock both domains, claim the source (read-only) then the destination
    (writable: a writable type reference for the copy), check the ranges, copy."""
    if not length:
        return                                   # nothing to do: not even the arguments are checked
    dom = vcpu.domain
    src_gref, dst_gref = bool(flags & GNTCOPY_source_gref), bool(flags & GNTCOPY_dest_gref)
    _copy_domain(vcpu, src_dom, src_gref)
    _copy_domain(vcpu, dst_dom, dst_gref)
    src = _copy_claim(vcpu, src_dom, src_ptr, src_gref, readonly=True)
    dst = _copy_claim(vcpu, dst_dom, dst_ptr, dst_gref, readonly=False)
    try:
        if src_off + length > 4096 or dst_off + length > 4096:
            raise _CopyError(GNTST_bad_copy_arg, "copy beyond page area")
        mv = dom.mem.mv
        mv[(dst << 12) + dst_off:(dst << 12) + dst_off + length] = \
            bytes(mv[(src << 12) + src_off:(src << 12) + src_off + length])
    finally:
        dom.frames.put_type(dst)


def _copy_domain(vcpu: "Vcpu", domid: int, is_gref: bool) -> None:
    """gnttab_copy_lock_domain: only DOMID_SELF may be named by frame; a domain must exist (ourselves, or
    dom0, whose table grants us nothing)."""
    if domid != DOMID_SELF and not is_gref:
        raise _CopyError(GNTST_permission_denied, f"d{domid}: only DOMID_SELF may be named by frame")
    if domid not in (DOMID_SELF, vcpu.domain.domid, 0):
        raise _CopyError(GNTST_bad_domain, f"no domain {domid}")


def _copy_claim(vcpu: "Vcpu", domid: int, ptr: int, is_gref: bool, readonly: bool) -> int:
    """gnttab_copy_claim_buf: the frame behind one side of a copy. By grant: acquire_grant_for_copy's checks
    (the reference within the table, not pinned by another domain, GTF_permit_access to us, not
    GTF_readonly for a destination, the frame the granting domain's). By frame: it must be ours
    (get_paged_frame). A destination then takes a writable type reference (dropped after the copy): a page
    table, a descriptor page is never written this way."""
    dom = vcpu.domain
    if is_gref:
        if domid == 0:
            raise _CopyError(GNTST_general_error, f"dom0 grants d{dom.domid} nothing (ref {ptr & 0xFFFFFFFF})")
        mfn = _acquire_for_copy(dom, ptr & 0xFFFFFFFF, readonly)
    else:
        mfn = ptr
        if not dom.frames.owned_by(mfn, dom.domid):
            raise _CopyError(GNTST_bad_page, f"frame {mfn:#x} is not the domain's")
    if not readonly:
        try:
            dom.frames.get_type(mfn, PGT_writable, dom.domid)
        except PageTypeError as e:
            raise _CopyError(GNTST_general_error, f"could not get writable frame {mfn:#x}: {e}") from None
    return mfn


def _acquire_for_copy(dom, ref: int, readonly: bool) -> int:
    if ref >= max(1, dom.grants.nr_frames) * ENTRIES_PER_FRAME:
        raise _CopyError(GNTST_bad_gntref, f"bad grant reference {ref:#x}")
    if ref in dom.grants.dom0_pins:
        raise _CopyError(GNTST_general_error, f"grant {ref} is pinned by dom0")      # act->domid != ldom
    maps = [m for m in dom.grants.maptrack if m is not None and m.ref == ref]
    writable_pin = any(not m.flags & GNTMAP_readonly for m in maps)
    eflags, edomid, frame = _ENTRY.unpack_from(dom.mem.mv, _entry_ma(dom, ref))
    if not maps or (not readonly and not writable_pin):
        if (eflags & GTF_type_mask) != GTF_permit_access or edomid != dom.domid:
            raise _CopyError(GNTST_general_error, f"grant {ref}: bad flags {eflags:#x} or domain {edomid}")
        if not readonly and eflags & GTF_readonly:
            raise _CopyError(GNTST_general_error, f"grant {ref} is read-only")
    mfn = maps[0].mfn if maps else frame
    if not dom.frames.owned_by(mfn, dom.domid):
        raise _CopyError(GNTST_bad_page, f"grant {ref} names frame {mfn:#x}, not the domain's")
    if maps and not readonly and not writable_pin and frame != mfn:
        raise _CopyError(GNTST_general_error, f"grant {ref} changed frame while pinned")
    return mfn
