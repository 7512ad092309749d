"""grant_table_op, version 1: the grant table frames a guest maps and fills (Mini-OS's init_gnttab).

The frames are Xen's, shared with the domain (like shared_info): the domain may map them writable.
Mapping foreign grants is a dom0 affair and arrives with the split-driver backends.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi import errno
from miniguest.abi.xen import DOMID_SELF, HYPERVISOR_grant_table_op
from miniguest.hypervisor.hypercalls import UnknownSubop, hypercall
from miniguest.hypervisor.memory import GuestFault

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
NAMES = {0: "map_grant_ref", 1: "unmap_grant_ref", 2: "setup_table", 3: "dump_table", 4: "transfer",
         5: "copy", 6: "query_size", 7: "unmap_and_replace", 8: "set_version", 9: "get_status_frames",
         10: "get_version", 11: "swap_grant_ref", 12: "cache_flush"}
GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_virt_addr = -5
GNTST_permission_denied = -8

_SETUP = struct.Struct("<H2xIh6xQ")        # dom, nr_frames, status, frame_list
_QUERY = struct.Struct("<H2xIIh2x")        # dom, nr_frames, max_nr_frames, status


def _self(vcpu: "Vcpu", dom: int) -> bool:
    return dom in (DOMID_SELF, vcpu.domain.domid)


@hypercall(HYPERVISOR_grant_table_op, 3, subop_arg=0, subop_names=NAMES)
def grant_table_op(vcpu: "Vcpu", cmd: int, uop: int, count: int) -> int:
    cmd &= 0xFFFFFFFF
    count &= 0xFFFFFFFF
    dom = vcpu.domain
    gt = dom.grant_frames
    if cmd == GNTTABOP_setup_table:
        for i in range(count):
            arg = uop + i * _SETUP.size
            d, nr, _, frame_list = _SETUP.unpack(vcpu.mem.read(arg, _SETUP.size))
            status = GNTST_okay
            if not _self(vcpu, d):
                status = GNTST_permission_denied
            elif nr > len(gt):
                status = GNTST_general_error
            else:
                dom.grant_nr_frames = max(dom.grant_nr_frames, nr)
                try:
                    vcpu.mem.write(frame_list, struct.pack(f"<{nr}Q", *gt[:nr]))
                except GuestFault:
                    status = GNTST_bad_virt_addr
            vcpu.mem.write(arg + 8, struct.pack("<h", status))
        return 0
    if cmd == GNTTABOP_query_size:
        for i in range(count):
            arg = uop + i * _QUERY.size
            d = struct.unpack("<H", vcpu.mem.read(arg, 2))[0]
            status = GNTST_okay if _self(vcpu, d) else GNTST_bad_domain
            vcpu.mem.write(arg, _QUERY.pack(d, dom.grant_nr_frames, len(gt), status))
        return 0
    if cmd == GNTTABOP_get_version:
        d = struct.unpack("<H", vcpu.mem.read(uop, 2))[0]
        if not _self(vcpu, d):
            return -errno.EPERM
        vcpu.mem.write(uop + 4, struct.pack("<I", 1))
        return 0
    if cmd == GNTTABOP_set_version:
        # Xen's gnttab_set_version: only 1 and 2 are versions (else -EINVAL); this table is v1-only, so v2
        # answers as a Xen whose grant table max version is 1 does: -ENOSYS, "as before set_version was
        # introduced". The current version is written back in every case.
        version = struct.unpack("<I", vcpu.mem.read(uop, 4))[0]
        rc = 0 if version == 1 else -errno.ENOSYS if version == 2 else -errno.EINVAL
        vcpu.mem.write(uop, struct.pack("<I", 1))
        return rc
    if cmd in NAMES:
        return -errno.ENOSYS
    raise UnknownSubop(cmd)
