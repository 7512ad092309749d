"""public/vcpu.h."""
from __future__ import annotations

import ctypes

VCPUOP_initialise = 0
VCPUOP_up = 1
VCPUOP_down = 2
VCPUOP_is_up = 3
VCPUOP_get_runstate_info = 4
VCPUOP_register_runstate_memory_area = 5
VCPUOP_set_periodic_timer = 6
VCPUOP_stop_periodic_timer = 7
VCPUOP_set_singleshot_timer = 8
VCPUOP_stop_singleshot_timer = 9
VCPUOP_register_vcpu_info = 10
VCPUOP_send_nmi = 11
VCPUOP_get_physid = 12
VCPUOP_register_vcpu_time_memory_area = 13

VCPU_SSHOTTMR_future = 1 << 0


class vcpu_set_periodic_timer(ctypes.LittleEndianStructure):
    _fields_ = [("period_ns", ctypes.c_uint64)]


class vcpu_set_singleshot_timer(ctypes.LittleEndianStructure):
    _fields_ = [("timeout_abs_ns", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class vcpu_register_vcpu_info(ctypes.LittleEndianStructure):
    _fields_ = [("mfn", ctypes.c_uint64), ("offset", ctypes.c_uint32), ("rsvd", ctypes.c_uint32)]


class vcpu_runstate_info(ctypes.LittleEndianStructure):
    _fields_ = [("state", ctypes.c_int32), ("_pad", ctypes.c_uint32), ("state_entry_time", ctypes.c_uint64),
                ("time", ctypes.c_uint64 * 4)]


RUNSTATE_running = 0
RUNSTATE_runnable = 1
RUNSTATE_blocked = 2
RUNSTATE_offline = 3
