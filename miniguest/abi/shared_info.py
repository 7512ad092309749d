"""shared_info, vcpu_info and vcpu_time_info (public/xen.h, arch-x86), x86_64 layouts.

The page is shared by Xen and the guest: pending/mask bitmaps and the time records live here, and the guest
may rewrite any of it at any moment, so the hypervisor reads it afresh whenever it needs a value.
"""
from __future__ import annotations

import ctypes

VCPU_INFO_SIZE = 64
# vcpu_info field offsets.
VI_UPCALL_PENDING = 0x00
VI_UPCALL_MASK = 0x01
VI_PENDING_SEL = 0x08
VI_ARCH_CR2 = 0x10
VI_TIME = 0x20
# vcpu_time_info offsets (relative to the time record).
VT_VERSION = 0x00
VT_TSC_TIMESTAMP = 0x08
VT_SYSTEM_TIME = 0x10
VT_TSC_TO_SYSTEM_MUL = 0x18
VT_TSC_SHIFT = 0x1C
VT_FLAGS = 0x1D
XEN_PVCLOCK_TSC_STABLE_BIT = 1 << 0
# shared_info offsets.
SI_VCPU_INFO = 0x000
SI_EVTCHN_PENDING = 0x800
SI_EVTCHN_MASK = 0xA00
SI_WC_VERSION = 0xC00
SI_WC_SEC = 0xC04
SI_WC_NSEC = 0xC08
SI_WC_SEC_HI = 0xC0C
SI_ARCH_MAX_PFN = 0xC10
SI_ARCH_PFN_TO_MFN_FRAME_LIST_LIST = 0xC18
SI_ARCH_NMI_REASON = 0xC20


class vcpu_time_info(ctypes.LittleEndianStructure):
    _fields_ = [("version", ctypes.c_uint32), ("pad0", ctypes.c_uint32),
                ("tsc_timestamp", ctypes.c_uint64), ("system_time", ctypes.c_uint64),
                ("tsc_to_system_mul", ctypes.c_uint32), ("tsc_shift", ctypes.c_int8),
                ("flags", ctypes.c_uint8), ("pad1", ctypes.c_uint8 * 2)]


class vcpu_info(ctypes.LittleEndianStructure):
    _fields_ = [("evtchn_upcall_pending", ctypes.c_uint8), ("evtchn_upcall_mask", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 6), ("evtchn_pending_sel", ctypes.c_uint64),
                ("cr2", ctypes.c_uint64), ("arch_pad", ctypes.c_uint64), ("time", vcpu_time_info)]


assert ctypes.sizeof(vcpu_time_info) == 32 and ctypes.sizeof(vcpu_info) == VCPU_INFO_SIZE
