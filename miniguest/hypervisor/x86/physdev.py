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
from typing import TYPE_CHECKING, Optional

from miniguest.abi import errno
from miniguest.abi.physdev import (PHYSDEVOP_eoi, PHYSDEVOP_irq_status_query, PHYSDEVOP_pirq_eoi_gmfn_v1,
                                   PHYSDEVOP_pirq_eoi_gmfn_v2, PHYSDEVOP_set_iobitmap, PHYSDEVOP_set_iopl)
from miniguest.abi.xen import HYPERVISOR_physdev_op, HYPERVISOR_physdev_op_compat
from miniguest.hypervisor.hypercall import Handler, Hypercall, SubOp, SubOps
from miniguest.hypervisor.x86.page_types import PGT_writable, PageTypeError

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu


def set_iopl(vcpu: "Vcpu", arg: int) -> int:
    iopl = struct.unpack("<I", vcpu.mem.read(arg, 4))[0]
    if iopl > 3:
        return -errno.EINVAL
    vcpu.iopl = iopl
    return 0


def _pirq_eoi_gmfn(cmd: int) -> Handler:
    return lambda vcpu, arg: pirq_eoi_gmfn(vcpu, struct.unpack("<Q", vcpu.mem.read(arg, 8))[0], cmd)


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
    if dom.pirq_eoi_mfn is not None:                # (frame 0 is a frame: None means none registered)
        dom.frames.put_type(gmfn)
        return -errno.EBUSY
    dom.pirq_eoi_mfn = gmfn
    dom.pirq_eoi_auto_unmask = cmd == PHYSDEVOP_pirq_eoi_gmfn_v1
    return 0


def physdev_op(vcpu: "Vcpu", cmd: int, arg: int) -> Optional[int]:
    return SUBOPS.run(cmd & 0xFFFFFFFF, vcpu, arg)


# The sub-ops without a handler are about physical devices a domU does not have: Xen's, answered -ENOSYS.
SUBOPS = SubOps((
    SubOp(PHYSDEVOP_irq_status_query, "irq_status_query"),
    SubOp(PHYSDEVOP_set_iopl, "set_iopl", set_iopl),
    SubOp(PHYSDEVOP_set_iobitmap, "set_iobitmap"),
    SubOp(PHYSDEVOP_eoi, "eoi"),
    SubOp(PHYSDEVOP_pirq_eoi_gmfn_v1, "pirq_eoi_gmfn_v1", _pirq_eoi_gmfn(PHYSDEVOP_pirq_eoi_gmfn_v1)),
    SubOp(PHYSDEVOP_pirq_eoi_gmfn_v2, "pirq_eoi_gmfn_v2", _pirq_eoi_gmfn(PHYSDEVOP_pirq_eoi_gmfn_v2)),
))
HYPERCALLS = (Hypercall(HYPERVISOR_physdev_op, "physdev_op", physdev_op, 2, subop_arg=0, subops=SUBOPS),
              Hypercall(HYPERVISOR_physdev_op_compat, "physdev_op_compat", None))
