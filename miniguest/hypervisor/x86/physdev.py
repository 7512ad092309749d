"""physdev_op: the vCPU's virtual IOPL (PHYSDEVOP_set_iopl), as Xen keeps it for a PV guest.

A PV kernel cannot run with a real IOPL above 0 (it could then play with the real interrupt flag), so Xen
shadows the IOPL the guest asks for and consults it when an I/O instruction, `cli` or `sti` faults
(privop.iopl_ok). With VMASST_TYPE_architectural_iopl the shadow also follows the IOPL of every
HYPERVISOR_iret frame and is shown in bounce frames (traps.iret, Vcpu.bounce). There are no physical
devices or interrupts to talk about, so the other sub-ops answer -ENOSYS -- except PHYSDEVOP_pirq_eoi_gmfn
(v1/v2), which Xen accepts from any PV domain: the guest names a frame of its own where Xen will keep the
"needs EOI" bitmap of its PIRQs. Xen takes a writable type reference on it, once per domain (-EBUSY
after); with no PIRQs the bitmap stays zero.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi import errno
from miniguest.abi.physdev import (PHYSDEVOP_NAMES, PHYSDEVOP_pirq_eoi_gmfn_v1, PHYSDEVOP_pirq_eoi_gmfn_v2,
                                   PHYSDEVOP_set_iopl)
from miniguest.abi.xen import HYPERVISOR_physdev_op
from miniguest.hypervisor.hypercall import UnknownSubop, hypercall
from miniguest.hypervisor.x86.page_types import PGT_writable, PageTypeError

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu


@hypercall(HYPERVISOR_physdev_op, 2, subop_arg=0, subop_names=PHYSDEVOP_NAMES)
def physdev_op(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    cmd &= 0xFFFFFFFF
    if cmd == PHYSDEVOP_set_iopl:
        iopl = struct.unpack("<I", vcpu.mem.read(arg, 4))[0]
        if iopl > 3:
            return -errno.EINVAL
        vcpu.iopl = iopl
        return 0
    if cmd in (PHYSDEVOP_pirq_eoi_gmfn_v1, PHYSDEVOP_pirq_eoi_gmfn_v2):
        return pirq_eoi_gmfn(vcpu, struct.unpack("<Q", vcpu.mem.read(arg, 8))[0], cmd)
    if cmd in PHYSDEVOP_NAMES:
        return -errno.ENOSYS
    raise UnknownSubop(cmd)


def pirq_eoi_gmfn(vcpu: "Vcpu", gmfn: int, cmd: int) -> int:
    """Xen's PHYSDEVOP_pirq_eoi_gmfn_v{1,2}: a PV guest's gmfn is an mfn; -EINVAL unless the domain owns it
    and it can be made writable; -EBUSY once one is registered."""
    dom = vcpu.domain
    if not dom.frames.valid(gmfn) or not dom.frames.owned_by(gmfn, dom.domid):
        return -errno.EINVAL
    try:
        dom.frames.get_type(gmfn, PGT_writable, dom.domid)
    except PageTypeError:
        return -errno.EINVAL
    if dom.pirq_eoi_mfn:
        dom.frames.put_type(gmfn)
        return -errno.EBUSY
    dom.pirq_eoi_mfn = gmfn
    dom.pirq_eoi_auto_unmask = cmd == PHYSDEVOP_pirq_eoi_gmfn_v1
    return 0
