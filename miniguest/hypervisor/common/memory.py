"""memory_op (Xen: xen/common/memory.c): the reservation sub-ops, reservation queries, the memory map and
the M2P's location.

The reservation sub-ops follow Xen's rules as a PV guest sees them:
- The result is the number of extents done, never an errno: a bad or unreadable argument, another domain's
  id, an extent order above the domU limit (9 on x86) or a start extent (cmd >> MEMOP_EXTENT_SHIFT) past
  the end all give back the start extent; an allocation that fails stops the batch there.
- An allocation fails when it would take the domain past its cap, max_pages (Xen's "Over-allocation":
  tot_pages + 2^order > max_pages), or when the machine has no free block of 2^order frames (aligned).
  Frames come from the machine's free pool -- the frames guests have given back -- lowest first, so a
  run is deterministic. They are scrubbed (zeroed) before the guest gets them.
- increase_reservation writes the MFN of each new extent to the list when one is given (the guest then
  sets its own p2m and the M2P with MMU_MACHPHYS_UPDATE); populate_physmap reads a guest frame number
  per extent, points the M2P (and our p2m) at the new frames and writes the MFN back.
- decrease_reservation takes MFNs (a PV guest's "gmfn"). Each frame must be the domain's (else the batch
  stops, Xen's "Bad page free"); a pin is dropped; the frame leaves the p2m and the M2P. It goes back to
  the pool -- losing its owner and counting no more against tot_pages -- unless something still holds it:
  a type reference (page table, writable mapping, GDT, vcpu_info), a read-only mapping in one of the
  domain's L1 tables, or dom0 and Xen (shared_info, grant frames, the console and xenstore rings). In
  Xen such a page is freed when its last reference goes; miniguest keeps no general reference counts, so
  it stays allocated to the domain, out of the physmap (documented deviation: it never returns to the pool).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import errno
from miniguest.abi.arch_x86 import MACH2PHYS_VIRT_START, PTE_ADDR_MASK, _PAGE_PRESENT
from miniguest.abi.memory import (MEMOP_CMD_MASK, MEMOP_EXTENT_SHIFT, XENMEM_add_to_physmap,
                                  XENMEM_current_reservation, XENMEM_decrease_reservation, XENMEM_exchange,
                                  XENMEM_increase_reservation, XENMEM_machine_memory_map,
                                  XENMEM_machphys_mapping, XENMEM_machphys_mfn_list, XENMEM_maximum_gpfn,
                                  XENMEM_maximum_ram_page, XENMEM_maximum_reservation, XENMEM_memory_map,
                                  XENMEM_populate_physmap, XENMEM_set_memory_map)
from miniguest.abi.xen import DOMID_SELF, HYPERVISOR_memory_op
from miniguest.hypervisor.decode import DecodeCtx, Decoded, domid, put_list
from miniguest.hypervisor.hypercall import Handler, Hypercall, HypercallError, SubOp, SubOps, not_implemented
from miniguest.hypervisor.ram import GuestFault, guest_range_ok
from miniguest.hypervisor.x86.page_types import OWNER_NONE, PGT_l1

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain
    from miniguest.hypervisor.vcpu import Vcpu

DOMU_MAX_ORDER = 9                   # x86's CONFIG_DOMU_MAX_ORDER (PAGETABLE_ORDER)
MAX_NR_EXTENTS = 0xFFFFFFFF >> MEMOP_EXTENT_SHIFT
INVALID_ENTRY = (1 << 64) - 1        # INVALID_M2P_ENTRY / INVALID_P2M_ENTRY
XENMEMF_vnode = 1 << 18              # a vNUMA node: this domain has no vNUMA topology
_RESERVATION = struct.Struct("<QQIIH")
_U64 = struct.Struct("<Q")


class _Args:
    def __init__(self, start: int, nr: int, order: int, flags: int, domid: int) -> None:
        self.start, self.nr, self.order, self.flags, self.domid = start, nr, order, flags, domid


def _read_args(vcpu: "Vcpu", arg: int, start_extent: int) -> Optional[_Args]:
    """The reservation, or None when Xen returns start_extent without doing anything."""
    try:
        a = _Args(*_RESERVATION.unpack(vcpu.mem.read(arg, _RESERVATION.size)))
    except GuestFault:
        return None
    if a.nr > MAX_NR_EXTENTS or start_extent >= a.nr:
        return None
    if a.domid not in (DOMID_SELF, vcpu.domain.domid):
        return None                  # another domain: not for an unprivileged guest
    if a.flags & XENMEMF_vnode:
        return None
    return a


def _list_ok(a: _Args, start_extent: int) -> bool:
    return guest_range_ok(a.start + 8 * start_extent, 8 * (a.nr - start_extent))


def _alloc(dom: "Domain", order: int) -> Optional[int]:
    """The first free, aligned block of 2^order machine frames within the cap, taken for the domain."""
    n = 1 << order
    if dom.tot_pages + n > dom.max_pages:
        dom.log_once(("over-allocation", dom.max_pages),
                     f"over-allocation: {dom.tot_pages + n} pages > the cap of {dom.max_pages}")
        return None
    owner = dom.frames.owner
    for base in range(0, dom.mem.nr_frames - n + 1, n):
        if all(owner[m] == OWNER_NONE for m in range(base, base + n)):
            for m in range(base, base + n):
                dom.frames.assign(m, dom.domid)
                dom.mem.clear_frame(m)
                dom.xen.set_m2p(m, INVALID_ENTRY)
            dom.tot_pages += n
            return base
    dom.log_once(("out-of-memory", order), f"no free block of {n} machine frames for the domain")
    return None


def increase_reservation(vcpu: "Vcpu", arg: int, start_extent: int) -> int:
    a = _read_args(vcpu, arg, start_extent)
    if a is None or (a.start and not _list_ok(a, start_extent)) or a.order > DOMU_MAX_ORDER:
        return start_extent
    dom = vcpu.domain
    i = start_extent
    while i < a.nr:
        mfn = _alloc(dom, a.order)
        if mfn is None:
            break
        if a.start:
            try:
                vcpu.mem.write(a.start + 8 * i, _U64.pack(mfn))
            except GuestFault:
                break                # Xen keeps the extent allocated and stops
        i += 1
    return i


def populate_physmap(vcpu: "Vcpu", arg: int, start_extent: int) -> int:
    a = _read_args(vcpu, arg, start_extent)
    if a is None or not _list_ok(a, start_extent) or a.order > DOMU_MAX_ORDER:
        return start_extent
    dom = vcpu.domain
    i = start_extent
    while i < a.nr:
        try:
            gpfn = _U64.unpack(vcpu.mem.read(a.start + 8 * i, 8))[0]
        except GuestFault:
            break
        mfn = _alloc(dom, a.order)
        if mfn is None:
            break
        for j in range(1 << a.order):
            dom.xen.set_m2p(mfn + j, (gpfn + j) & INVALID_ENTRY)
            if gpfn + j < len(dom.p2m):
                dom.p2m[gpfn + j] = mfn + j
        try:
            vcpu.mem.write(a.start + 8 * i, _U64.pack(mfn))
        except GuestFault:
            break
        i += 1
    return i


def _held_by_others(dom: "Domain") -> set[int]:
    """Frames Xen or dom0 keeps a reference to: shared_info, the grant frames, what dom0 maps."""
    return {dom.xen.shared_info_mfn, *dom.grants.frames, *dom.foreign_mapped, *dom.grants.dom0_mapped_frames()}


def _mapped_by_l1s(dom: "Domain") -> set[int]:
    """Frames some validated L1 table of the domain maps (read-only mappings hold no type reference)."""
    frames = dom.frames
    mv = dom.mem.mv
    mapped = set()
    for mfn in range(dom.mem.nr_frames):
        if frames.type[mfn] == PGT_l1 and frames.count[mfn] and frames.owner[mfn] == dom.domid:
            for (e,) in struct.iter_unpack("<Q", mv[mfn << 12:(mfn + 1) << 12]):
                if e & _PAGE_PRESENT:
                    mapped.add((e & PTE_ADDR_MASK) >> 12)
    return mapped


def decrease_reservation(vcpu: "Vcpu", arg: int, start_extent: int) -> int:
    a = _read_args(vcpu, arg, start_extent)
    if a is None or not _list_ok(a, start_extent) or a.order > DOMU_MAX_ORDER:
        return start_extent
    dom = vcpu.domain
    frames = dom.frames
    held: Optional[set[int]] = None
    i = start_extent
    while i < a.nr:
        try:
            gmfn = _U64.unpack(vcpu.mem.read(a.start + 8 * i, 8))[0]
        except GuestFault:
            break
        for j in range(1 << a.order):
            mfn = gmfn + j
            if mfn >= dom.mem.nr_frames:
                dom.log_once(("decrease", "invalid"), f"decrease_reservation: mfn {mfn:#x} is not RAM")
                return i             # -EINVAL in Xen's guest_remove_page: the batch stops
            if frames.owner[mfn] != dom.domid:
                dom.log_once(("decrease", "foreign"), f"decrease_reservation: bad page free of mfn {mfn:#x}")
                return i             # -ENXIO ("Bad page free")
            if frames.is_pinned(mfn):
                frames.unpin(mfn, dom.domid)
            pfn = dom.xen.get_m2p(mfn)
            if pfn < len(dom.p2m) and dom.p2m[pfn] == mfn:
                dom.p2m[pfn] = INVALID_ENTRY
            dom.xen.set_m2p(mfn, INVALID_ENTRY)
            if held is None:
                held = _held_by_others(dom) | _mapped_by_l1s(dom)
            if frames.count[mfn] or mfn in held:
                continue             # still referenced: stays allocated (see the module docstring)
            frames.release(mfn)
            dom.tot_pages -= 1
        i += 1
    vcpu.flush_tlb()
    return i


# -- the hypercall ---------------------------------------------------------------------------------------
def _target(vcpu: "Vcpu", arg: int) -> "Domain":
    domid = struct.unpack("<H", vcpu.mem.read(arg, 2))[0]
    if domid not in (DOMID_SELF, vcpu.domain.domid):
        raise HypercallError(-errno.ESRCH, f"no access to d{domid}")
    return vcpu.domain


def _reservation_op(fn: Callable[["Vcpu", int, int], int]) -> Handler:
    """A reservation sub-op: the number of extents done, never an errno (see above); the command's high bits
    are the extent to start from (a continuation)."""
    return lambda vcpu, cmd, arg: fn(vcpu, arg, (cmd & 0xFFFFFFFF) >> MEMOP_EXTENT_SHIFT)


def _maximum_ram_page(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    return vcpu.domain.mem.nr_frames


def _current_reservation(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    return _target(vcpu, arg).tot_pages


def _maximum_reservation(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    return _target(vcpu, arg).max_pages


def _maximum_gpfn(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    return _target(vcpu, arg).nr_pages - 1


def _memory_map(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    nr_entries, buffer = struct.unpack("<I4xQ", vcpu.mem.read(arg, 16))
    entries = vcpu.domain.e820()
    n = min(nr_entries, len(entries))
    vcpu.mem.write(buffer, b"".join(struct.pack("<QQI", a, s, t) for a, s, t in entries[:n]))
    vcpu.mem.write(arg, struct.pack("<I", n))
    return 0


def _machphys_mapping(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    nr = vcpu.domain.mem.nr_frames
    vcpu.mem.write(arg, struct.pack("<QQQ", MACH2PHYS_VIRT_START, MACH2PHYS_VIRT_START + nr * 8, nr - 1))
    return 0


def _privileged(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    return -errno.EPERM


def memory_op(vcpu: "Vcpu", cmd: int, arg: int) -> Optional[int]:
    return SUBOPS.run(cmd & MEMOP_CMD_MASK, vcpu, cmd, arg)


# -- decoders -----------------------------------------------------------------------------------------------
def _domid_in(ctx: DecodeCtx) -> Decoded:
    return {"domid": domid(ctx.u16(ctx.args[1]))}


def _reservation(ctx: DecodeCtx) -> tuple[int, int, int, int, int]:
    """(extent_start, nr_extents, extent_order, mem_flags, domid) of a xen_memory_reservation."""
    return ctx.unpack("<QQIIH", ctx.args[1])


def _reservation_in(ctx: DecodeCtx) -> Decoded:
    start, nr, order, flags, dom = _reservation(ctx)
    out: Decoded = {"nr_extents": nr, "extent_order": order, "mem_flags": flags, "domid": domid(dom)}
    if start and (ctx.args[0] & 0x3F) != 0:           # increase_reservation's list is output only
        values, total = ctx.array(start, nr, "<Q")
        put_list(out, "extents", [v[0] for v in values], total)
    return out


def _reservation_out(ctx: DecodeCtx, ins: Decoded) -> Optional[Decoded]:
    start = _reservation(ctx)[0]
    done = ctx.result or 0
    if not start or not done:
        return None
    values, total = ctx.array(start, done, "<Q")
    return put_list({}, "mfns", [v[0] for v in values], total)


def _memory_map_in(ctx: DecodeCtx) -> Decoded:
    return {"nr_entries": ctx.u32(ctx.args[1])}


def _memory_map_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    n, buf = ctx.unpack("<I4xQ", ctx.args[1])
    entries, total = ctx.array(buf, n, "<QQI")
    return {"entries": [{"addr": a, "size": s, "type": t} for a, s, t in entries]}


def _machphys_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    v_start, v_end, max_mfn = ctx.unpack("<QQQ", ctx.args[1])
    return {"v_start": v_start, "v_end": v_end, "max_mfn": max_mfn}


SUBOPS = SubOps((
    SubOp(XENMEM_increase_reservation, "increase_reservation", _reservation_op(increase_reservation),
          decode_in=_reservation_in, decode_out=_reservation_out),
    SubOp(XENMEM_decrease_reservation, "decrease_reservation", _reservation_op(decrease_reservation),
          decode_in=_reservation_in),
    SubOp(XENMEM_maximum_ram_page, "maximum_ram_page", _maximum_ram_page),
    SubOp(XENMEM_current_reservation, "current_reservation", _current_reservation, decode_in=_domid_in),
    SubOp(XENMEM_maximum_reservation, "maximum_reservation", _maximum_reservation, decode_in=_domid_in),
    SubOp(XENMEM_machphys_mfn_list, "machphys_mfn_list", not_implemented(XENMEM_machphys_mfn_list)),
    SubOp(XENMEM_populate_physmap, "populate_physmap", _reservation_op(populate_physmap),
          decode_in=_reservation_in, decode_out=_reservation_out),
    SubOp(XENMEM_add_to_physmap, "add_to_physmap", not_implemented(XENMEM_add_to_physmap)),
    SubOp(XENMEM_memory_map, "memory_map", _memory_map, decode_in=_memory_map_in, decode_out=_memory_map_out),
    SubOp(XENMEM_machine_memory_map, "machine_memory_map", _privileged),
    SubOp(XENMEM_exchange, "exchange", not_implemented(XENMEM_exchange)),
    SubOp(XENMEM_machphys_mapping, "machphys_mapping", _machphys_mapping, decode_out=_machphys_out),
    SubOp(XENMEM_set_memory_map, "set_memory_map", _privileged),
    SubOp(XENMEM_maximum_gpfn, "maximum_gpfn", _maximum_gpfn, decode_in=_domid_in),
))
HYPERCALLS = (Hypercall(HYPERVISOR_memory_op, "memory_op", memory_op, 2, subop_arg=0, subops=SUBOPS),)
