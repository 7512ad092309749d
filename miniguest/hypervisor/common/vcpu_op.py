"""vcpu_op: timers, vcpu_info placement and run-state queries for the vCPUs of this domain."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi import errno
from miniguest.abi.shared_info import VCPU_INFO_SIZE
from miniguest.abi.vcpu import (RUNSTATE_running, VCPU_SSHOTTMR_future, VCPUOP_NAMES, VCPUOP_down,
                                VCPUOP_get_physid, VCPUOP_get_runstate_info, VCPUOP_initialise, VCPUOP_is_up,
                                VCPUOP_register_runstate_memory_area, VCPUOP_register_vcpu_info,
                                VCPUOP_register_vcpu_time_memory_area,
                                VCPUOP_send_nmi, VCPUOP_set_periodic_timer, VCPUOP_set_singleshot_timer,
                                VCPUOP_stop_periodic_timer, VCPUOP_stop_singleshot_timer, VCPUOP_up)
from miniguest.abi.xen import HYPERVISOR_vcpu_op
from miniguest.hypervisor.hypercall import HypercallError, UnknownSubop, hypercall
from miniguest.hypervisor.x86.page_types import PGT_writable
from miniguest.hypervisor.common.time import VCPU_TIME_INFO_SIZE, update_vcpu_time
from miniguest.hypervisor.ram import guest_range_ok

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

NAMES = {k: v[len("VCPUOP_"):] for k, v in VCPUOP_NAMES.items()}
MIN_PERIOD_NS = 1_000_000
STIME_DELTA_MAX = (1 << 62) - 1


@hypercall(HYPERVISOR_vcpu_op, 3, subop_arg=0, subop_names=NAMES)
def vcpu_op(vcpu: "Vcpu", cmd: int, vcpuid: int, arg: int) -> int:
    dom = vcpu.domain
    cmd &= 0xFFFFFFFF
    vcpuid &= 0xFFFFFFFF
    if vcpuid >= len(dom.vcpus):
        return -errno.ENOENT
    target = dom.vcpus[vcpuid]
    now = dom.clock.now_ns()
    if cmd == VCPUOP_set_singleshot_timer:
        if target is not vcpu:
            return -errno.EINVAL
        timeout, flags = struct.unpack("<QI4x", vcpu.mem.read(arg, 16))
        if flags & VCPU_SSHOTTMR_future and timeout < now:
            return -errno.ETIME
        target.timer.set_singleshot(max(timeout, now))
        return 0
    if cmd == VCPUOP_stop_singleshot_timer:
        if target is not vcpu:
            return -errno.EINVAL
        target.timer.stop_singleshot()
        return 0
    if cmd == VCPUOP_set_periodic_timer:
        period = struct.unpack("<Q", vcpu.mem.read(arg, 8))[0]
        if period < MIN_PERIOD_NS or period > STIME_DELTA_MAX:
            return -errno.EINVAL
        target.timer.period = period
        target.timer.start_periodic(now)
        return 0
    if cmd == VCPUOP_stop_periodic_timer:
        target.timer.period = 0
        target.timer.stop_periodic()
        return 0
    if cmd == VCPUOP_is_up:
        return 1
    if cmd == VCPUOP_up:
        return 0
    if cmd in (VCPUOP_initialise, VCPUOP_down):
        return -errno.EINVAL if cmd == VCPUOP_initialise else -errno.EBUSY
    if cmd == VCPUOP_get_runstate_info:
        t = now
        vcpu.mem.write(arg, struct.pack("<i4xQ4Q", RUNSTATE_running, t, t, 0, 0, 0))
        return 0
    if cmd == VCPUOP_register_vcpu_info:
        mfn, offset = struct.unpack("<QI4x", vcpu.mem.read(arg, 16))
        return register_vcpu_info(target, mfn, offset)
    if cmd == VCPUOP_register_runstate_memory_area:
        addr = struct.unpack("<Q", vcpu.mem.read(arg, 8))[0]
        target.runstate_area = addr
        return 0
    if cmd == VCPUOP_register_vcpu_time_memory_area:
        # Xen's arch_do_vcpu_op: a guest address (checked to be one, not to be mapped) where every update of
        # the vCPU's time record is copied too (the vDSO's pvclock page); 0 stops it.
        addr = struct.unpack("<Q", vcpu.mem.read(arg, 8))[0]
        if addr and not guest_range_ok(addr, VCPU_TIME_INFO_SIZE):
            return -errno.EFAULT
        target.time_info_guest = addr
        update_vcpu_time(target)
        return 0
    if cmd == VCPUOP_get_physid:
        return -errno.EPERM
    if cmd == VCPUOP_send_nmi:
        return -errno.ENOSYS
    raise UnknownSubop(cmd)


def register_vcpu_info(vcpu: "Vcpu", mfn: int, offset: int) -> int:
    """Move vcpu_info into a guest frame (Xen's map_vcpu_info): copy the current contents there."""
    dom = vcpu.domain
    if vcpu.vcpu_info_view is not None:
        return -errno.EINVAL                   # Xen allows it only once
    if offset > 4096 - VCPU_INFO_SIZE or offset & 7:
        return -errno.EINVAL
    if mfn >= dom.mem.nr_frames or dom.frames.owner[mfn] != dom.domid:
        return -errno.EINVAL
    try:
        dom.frames.get_type(mfn, PGT_writable, dom.domid)    # held for as long as it is registered
    except Exception:
        raise HypercallError(-errno.EINVAL, "vcpu_info frame cannot be writable") from None
    view, old = vcpu._vi()
    data = bytes(view[old:old + VCPU_INFO_SIZE])
    frame = dom.mem.frame(mfn)
    frame[offset:offset + VCPU_INFO_SIZE] = data
    vcpu.vcpu_info_view = frame
    vcpu.vcpu_info_offset = offset
    vcpu.vcpu_info_mfn = mfn
    # Xen sets every selector bit so the guest rescans after the move.
    struct.pack_into("<Q", frame, offset + 8, (1 << 64) - 1)
    frame[offset] = 1
    update_vcpu_time(vcpu)
    return 0
