"""public/callback.h and the x86_64 set_callbacks convention."""
from __future__ import annotations

import ctypes

CALLBACKTYPE_event = 0
CALLBACKTYPE_failsafe = 1
CALLBACKTYPE_syscall = 2
CALLBACKTYPE_sysenter_deprecated = 3
CALLBACKTYPE_nmi = 4
CALLBACKTYPE_sysenter = 5
CALLBACKTYPE_syscall32 = 7
CALLBACKTYPE_NAMES = {v: k[len("CALLBACKTYPE_"):] for k, v in globals().items() if k.startswith("CALLBACKTYPE_")}

CALLBACKF_mask_events = 1 << 0

CALLBACKOP_register = 0
CALLBACKOP_unregister = 1


class callback_register(ctypes.LittleEndianStructure):
    _fields_ = [("type", ctypes.c_uint16), ("flags", ctypes.c_uint16), ("_pad", ctypes.c_uint32),
                ("address", ctypes.c_uint64)]


class callback_unregister(ctypes.LittleEndianStructure):
    _fields_ = [("type", ctypes.c_uint16), ("_unused", ctypes.c_uint16)]
