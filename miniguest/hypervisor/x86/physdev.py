"""physdev_op: the vCPU's virtual IOPL (PHYSDEVOP_set_iopl), as Xen keeps it for a PV guest.

A PV kernel cannot run with a real IOPL above 0 (it could then play with the real interrupt flag), so Xen
shadows the IOPL the guest asks for and consults it when an I/O instruction, `cli` or `sti` faults
(privop.iopl_ok). With VMASST_TYPE_architectural_iopl the shadow also follows the IOPL of every
HYPERVISOR_iret frame and is shown in bounce frames (traps.iret, Vcpu.bounce). There are no physical
devices or interrupts to talk about, so the other sub-ops answer -ENOSYS.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi import errno
from miniguest.abi.physdev import PHYSDEVOP_NAMES, PHYSDEVOP_set_iopl
from miniguest.abi.xen import HYPERVISOR_physdev_op
from miniguest.hypervisor.hypercall import UnknownSubop, hypercall

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
    if cmd in PHYSDEVOP_NAMES:
        return -errno.ENOSYS
    raise UnknownSubop(cmd)
