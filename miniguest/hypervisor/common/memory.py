"""memory_op: reservations (reservation.py), reservation queries, the memory map, the M2P's location."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi import errno
from miniguest.abi.arch_x86 import MACH2PHYS_VIRT_START
from miniguest.abi.memory import (MEMOP_CMD_MASK, MEMOP_EXTENT_SHIFT, XENMEM_NAMES,
                                  XENMEM_current_reservation, XENMEM_decrease_reservation,
                                  XENMEM_increase_reservation, XENMEM_populate_physmap,
                                  XENMEM_machphys_mapping, XENMEM_maximum_gpfn, XENMEM_maximum_ram_page,
                                  XENMEM_maximum_reservation, XENMEM_memory_map, XENMEM_set_memory_map,
                                  XENMEM_machine_memory_map)
from miniguest.abi.xen import DOMID_SELF, HYPERVISOR_memory_op
from miniguest.hypervisor.common import reservation
from miniguest.hypervisor.hypercall import HypercallError, UnknownSubop, hypercall

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

NAMES = {k: v[len("XENMEM_"):] for k, v in XENMEM_NAMES.items()}
RESERVATION_OPS = {XENMEM_increase_reservation: reservation.increase_reservation,
                   XENMEM_decrease_reservation: reservation.decrease_reservation,
                   XENMEM_populate_physmap: reservation.populate_physmap}


def _target(vcpu: "Vcpu", arg: int):
    domid = struct.unpack("<H", vcpu.mem.read(arg, 2))[0]
    if domid not in (DOMID_SELF, vcpu.domain.domid):
        raise HypercallError(-errno.ESRCH, f"no access to d{domid}")
    return vcpu.domain


@hypercall(HYPERVISOR_memory_op, 2, subop_arg=0, subop_names=NAMES)
def memory_op(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    op = cmd & MEMOP_CMD_MASK
    dom = vcpu.domain
    if op in RESERVATION_OPS:           # the number of extents done, never an errno (reservation.py)
        return RESERVATION_OPS[op](vcpu, arg, (cmd & 0xFFFFFFFF) >> MEMOP_EXTENT_SHIFT)
    if op == XENMEM_maximum_ram_page:
        return dom.mem.nr_frames
    if op == XENMEM_current_reservation:
        return _target(vcpu, arg).tot_pages
    if op == XENMEM_maximum_reservation:
        return _target(vcpu, arg).max_pages
    if op == XENMEM_maximum_gpfn:
        return _target(vcpu, arg).nr_pages - 1
    if op == XENMEM_memory_map:
        nr_entries, buffer = struct.unpack("<I4xQ", vcpu.mem.read(arg, 16))
        entries = dom.e820()
        n = min(nr_entries, len(entries))
        vcpu.mem.write(buffer, b"".join(struct.pack("<QQI", a, s, t) for a, s, t in entries[:n]))
        vcpu.mem.write(arg, struct.pack("<I", n))
        return 0
    if op == XENMEM_machphys_mapping:
        nr = dom.mem.nr_frames
        vcpu.mem.write(arg, struct.pack("<QQQ", MACH2PHYS_VIRT_START, MACH2PHYS_VIRT_START + nr * 8, nr - 1))
        return 0
    if op in (XENMEM_set_memory_map, XENMEM_machine_memory_map):
        return -errno.EPERM
    raise UnknownSubop(op)

