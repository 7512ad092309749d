"""public/io/console.h: the xencons_interface ring page."""
from __future__ import annotations

import ctypes

XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048
CONS_IN = 0x000
CONS_OUT = 0x400
CONS_IN_CONS = 0xC00
CONS_IN_PROD = 0xC04
CONS_OUT_CONS = 0xC08
CONS_OUT_PROD = 0xC0C


class xencons_interface(ctypes.LittleEndianStructure):
    _fields_ = [("in_", ctypes.c_char * XENCONS_IN_SIZE), ("out", ctypes.c_char * XENCONS_OUT_SIZE),
                ("in_cons", ctypes.c_uint32), ("in_prod", ctypes.c_uint32),
                ("out_cons", ctypes.c_uint32), ("out_prod", ctypes.c_uint32)]


assert xencons_interface.out_prod.offset == CONS_OUT_PROD
