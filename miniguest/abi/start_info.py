"""start_info (public/xen.h), x86_64 layout: 0x490 bytes, handed to the guest in RSI at entry."""
from __future__ import annotations

import ctypes

XEN_START_INFO_MAGIC = b"xen-3.0-x86_64"
MAX_GUEST_CMDLINE = 1024

SIF_PRIVILEGED = 1 << 0
SIF_INITDOMAIN = 1 << 1
SIF_MULTIBOOT_MOD = 1 << 2
SIF_MOD_START_PFN = 1 << 3
SIF_VIRT_P2M_4TOOLS = 1 << 4


class start_info(ctypes.LittleEndianStructure):
    _fields_ = [
        ("magic", ctypes.c_char * 32),          # 0x000
        ("nr_pages", ctypes.c_uint64),          # 0x020
        ("shared_info", ctypes.c_uint64),       # 0x028 machine address of the shared_info page
        ("flags", ctypes.c_uint32),             # 0x030 SIF_*
        ("_pad0", ctypes.c_uint32),
        ("store_mfn", ctypes.c_uint64),         # 0x038
        ("store_evtchn", ctypes.c_uint32),      # 0x040
        ("_pad1", ctypes.c_uint32),
        ("console_mfn", ctypes.c_uint64),       # 0x048 console.domU.mfn (dom0: info_off, info_size)
        ("console_evtchn", ctypes.c_uint32),    # 0x050 console.domU.evtchn
        ("_pad2", ctypes.c_uint32),
        ("pt_base", ctypes.c_uint64),           # 0x058 VA of the bootstrap L4
        ("nr_pt_frames", ctypes.c_uint64),      # 0x060
        ("mfn_list", ctypes.c_uint64),          # 0x068 VA of the p2m list
        ("mod_start", ctypes.c_uint64),         # 0x070 VA (or pfn with SIF_MOD_START_PFN) of the module
        ("mod_len", ctypes.c_uint64),           # 0x078
        ("cmd_line", ctypes.c_char * MAX_GUEST_CMDLINE),  # 0x080
        ("first_p2m_pfn", ctypes.c_uint64),     # 0x480
        ("nr_p2m_frames", ctypes.c_uint64),     # 0x488
    ]


assert ctypes.sizeof(start_info) == 0x490
