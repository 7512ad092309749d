"""vcpu_op: timers, vcpu_info placement and run-state queries for the vCPUs of this domain."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import errno
from miniguest.abi.shared_info import VCPU_INFO_SIZE
from miniguest.abi.vcpu import (RUNSTATE_running, VCPU_SSHOTTMR_future, VCPUOP_down, VCPUOP_get_physid,
                                VCPUOP_get_runstate_info, VCPUOP_initialise, VCPUOP_is_up,
                                VCPUOP_register_runstate_memory_area, VCPUOP_register_vcpu_info,
                                VCPUOP_register_vcpu_time_memory_area, VCPUOP_send_nmi,
                                VCPUOP_set_periodic_timer, VCPUOP_set_singleshot_timer,
                                VCPUOP_stop_periodic_timer, VCPUOP_stop_singleshot_timer, VCPUOP_up)
from miniguest.abi.xen import HYPERVISOR_vcpu_op
from miniguest.hypervisor.decode import DecodeCtx, Decoded
from miniguest.hypervisor.hypercall import Hypercall, HypercallError, SubOp, SubOps
from miniguest.hypervisor.x86.page_types import PGT_writable
from miniguest.hypervisor.common.time import VCPU_TIME_INFO_SIZE, update_vcpu_time
from miniguest.hypervisor.ram import guest_range_ok

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

MIN_PERIOD_NS = 1_000_000
STIME_DELTA_MAX = (1 << 62) - 1


def vcpu_op(vcpu: "Vcpu", cmd: int, vcpuid: int, arg: int) -> Optional[int]:
    dom = vcpu.domain
    vcpuid &= 0xFFFFFFFF
    if vcpuid >= len(dom.vcpus):
        return -errno.ENOENT
    return SUBOPS.run(cmd & 0xFFFFFFFF, vcpu, dom.vcpus[vcpuid], arg)


def _set_singleshot_timer(vcpu: "Vcpu", target: "Vcpu", arg: int) -> int:
    if target is not vcpu:
        return -errno.EINVAL
    now = vcpu.domain.clock.now_ns()
    timeout, flags = struct.unpack("<QI4x", vcpu.mem.read(arg, 16))
    if flags & VCPU_SSHOTTMR_future and timeout < now:
        return -errno.ETIME
    target.timer.set_singleshot(max(timeout, now))
    return 0


def _stop_singleshot_timer(vcpu: "Vcpu", target: "Vcpu", arg: int) -> int:
    if target is not vcpu:
        return -errno.EINVAL
    target.timer.stop_singleshot()
    return 0


def _set_periodic_timer(vcpu: "Vcpu", target: "Vcpu", arg: int) -> int:
    period = struct.unpack("<Q", vcpu.mem.read(arg, 8))[0]
    if period < MIN_PERIOD_NS or period > STIME_DELTA_MAX:
        return -errno.EINVAL
    target.timer.period = period
    target.timer.start_periodic(vcpu.domain.clock.now_ns())
    return 0


def _stop_periodic_timer(vcpu: "Vcpu", target: "Vcpu", arg: int) -> int:
    target.timer.period = 0
    target.timer.stop_periodic()
    return 0


def _answer(value: int) -> Callable[["Vcpu", "Vcpu", int], int]:
    return lambda vcpu, target, arg: value


def _get_runstate_info(vcpu: "Vcpu", target: "Vcpu", arg: int) -> int:
    t = vcpu.domain.clock.now_ns()
    vcpu.mem.write(arg, struct.pack("<i4xQ4Q", RUNSTATE_running, t, t, 0, 0, 0))
    return 0


def _register_vcpu_info(vcpu: "Vcpu", target: "Vcpu", arg: int) -> int:
    mfn, offset = struct.unpack("<QI4x", vcpu.mem.read(arg, 16))
    return register_vcpu_info(target, mfn, offset)


def _register_runstate_memory_area(vcpu: "Vcpu", target: "Vcpu", arg: int) -> int:
    target.runstate_area = struct.unpack("<Q", vcpu.mem.read(arg, 8))[0]
    return 0


def _register_vcpu_time_memory_area(vcpu: "Vcpu", target: "Vcpu", arg: int) -> int:
    # Xen's arch_do_vcpu_op: a guest address (checked to be one, not to be mapped) where every update of
    # the vCPU's time record is copied too (the vDSO's pvclock page); 0 stops it.
    addr = struct.unpack("<Q", vcpu.mem.read(arg, 8))[0]
    if addr and not guest_range_ok(addr, VCPU_TIME_INFO_SIZE):
        return -errno.EFAULT
    target.time_info_guest = addr
    update_vcpu_time(target)
    return 0


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
    view, old = vcpu.vcpu_info()
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


# -- decoders -----------------------------------------------------------------------------------------------
def _vcpu_in(ctx: DecodeCtx) -> Decoded:
    return {"vcpu": ctx.args[1] & 0xFFFFFFFF}


def _singleshot_in(ctx: DecodeCtx) -> Decoded:
    timeout, flags = ctx.unpack("<QI4x", ctx.args[2])
    return {"vcpu": ctx.args[1] & 0xFFFFFFFF, "timeout": timeout, "in_ns": timeout - ctx.now(), "flags": flags}


def _periodic_in(ctx: DecodeCtx) -> Decoded:
    return {"vcpu": ctx.args[1] & 0xFFFFFFFF, "period_ns": ctx.u64(ctx.args[2])}


def _vcpu_info_in(ctx: DecodeCtx) -> Decoded:
    mfn, offset = ctx.unpack("<QI4x", ctx.args[2])
    return {"vcpu": ctx.args[1] & 0xFFFFFFFF, "mfn": mfn, "offset": offset}


def _runstate_area_in(ctx: DecodeCtx) -> Decoded:
    return {"vcpu": ctx.args[1] & 0xFFFFFFFF, "addr": ctx.u64(ctx.args[2])}


def _runstate_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    state, entry, t0, t1, t2, t3 = ctx.unpack("<i4xQ4Q", ctx.args[2])
    return {"state": state, "state_entry_time": entry, "time": [t0, t1, t2, t3]}


SUBOPS = SubOps((
    SubOp(VCPUOP_initialise, "initialise", _answer(-errno.EINVAL), decode_in=_vcpu_in),
    SubOp(VCPUOP_up, "up", _answer(0), decode_in=_vcpu_in),
    SubOp(VCPUOP_down, "down", _answer(-errno.EBUSY), decode_in=_vcpu_in),
    SubOp(VCPUOP_is_up, "is_up", _answer(1), decode_in=_vcpu_in),
    SubOp(VCPUOP_get_runstate_info, "get_runstate_info", _get_runstate_info, decode_in=_vcpu_in,
          decode_out=_runstate_out),
    SubOp(VCPUOP_register_runstate_memory_area, "register_runstate_memory_area", _register_runstate_memory_area,
          decode_in=_runstate_area_in),
    SubOp(VCPUOP_set_periodic_timer, "set_periodic_timer", _set_periodic_timer, decode_in=_periodic_in),
    SubOp(VCPUOP_stop_periodic_timer, "stop_periodic_timer", _stop_periodic_timer, decode_in=_vcpu_in),
    SubOp(VCPUOP_set_singleshot_timer, "set_singleshot_timer", _set_singleshot_timer, decode_in=_singleshot_in),
    SubOp(VCPUOP_stop_singleshot_timer, "stop_singleshot_timer", _stop_singleshot_timer, decode_in=_vcpu_in),
    SubOp(VCPUOP_register_vcpu_info, "register_vcpu_info", _register_vcpu_info, decode_in=_vcpu_info_in),
    SubOp(VCPUOP_send_nmi, "send_nmi", _answer(-errno.ENOSYS), decode_in=_vcpu_in),
    SubOp(VCPUOP_get_physid, "get_physid", _answer(-errno.EPERM), decode_in=_vcpu_in),
    SubOp(VCPUOP_register_vcpu_time_memory_area, "register_vcpu_time_memory_area",
          _register_vcpu_time_memory_area),
))
HYPERCALLS = (Hypercall(HYPERVISOR_vcpu_op, "vcpu_op", vcpu_op, 3, subop_arg=0, subops=SUBOPS),)
