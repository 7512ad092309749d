"""public/memory.h and the e820 types a memory map carries."""
from __future__ import annotations

import ctypes

XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_maximum_ram_page = 2
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_machphys_mfn_list = 5
XENMEM_populate_physmap = 6
XENMEM_add_to_physmap = 7
XENMEM_memory_map = 9
XENMEM_machine_memory_map = 10
XENMEM_exchange = 11
XENMEM_machphys_mapping = 12
XENMEM_set_memory_map = 13
XENMEM_maximum_gpfn = 14
# The low bits of the memory_op command are the op; the rest carry a continuation start extent.
MEMOP_CMD_MASK = (1 << 6) - 1
MEMOP_EXTENT_SHIFT = 6

E820_RAM = 1
E820_RESERVED = 2


class xen_memory_reservation(ctypes.LittleEndianStructure):
    _fields_ = [("extent_start", ctypes.c_uint64), ("nr_extents", ctypes.c_uint64),
                ("extent_order", ctypes.c_uint32), ("mem_flags", ctypes.c_uint32),
                ("domid", ctypes.c_uint16), ("_pad", ctypes.c_uint16 * 3)]


class xen_memory_map(ctypes.LittleEndianStructure):
    _fields_ = [("nr_entries", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("buffer", ctypes.c_uint64)]


class e820entry(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("addr", ctypes.c_uint64), ("size", ctypes.c_uint64), ("type", ctypes.c_uint32)]


class xen_machphys_mapping(ctypes.LittleEndianStructure):
    _fields_ = [("v_start", ctypes.c_uint64), ("v_end", ctypes.c_uint64), ("max_mfn", ctypes.c_uint64)]


assert ctypes.sizeof(xen_memory_reservation) == 32 and ctypes.sizeof(e820entry) == 20
