"""public/arch-x86/xen.h and xen-x86_64.h: selectors, the hypervisor hole, trap_info, the iret frame,
page-table entry bits and the CPU exception vectors a PV guest sees."""
from __future__ import annotations

import ctypes

# Flat selectors Xen provides in its reserved GDT pages (ring 3: a 64-bit PV kernel runs at CPL3).
FLAT_RING3_CS32 = 0xE023
FLAT_RING3_CS64 = 0xE033
FLAT_RING3_DS32 = 0xE02B
FLAT_RING3_DS64 = 0x0000
FLAT_RING3_SS32 = 0xE02B
FLAT_RING3_SS64 = 0xE02B
FLAT_KERNEL_CS64 = FLAT_RING3_CS64
FLAT_KERNEL_DS64 = FLAT_RING3_DS64
FLAT_KERNEL_SS64 = FLAT_RING3_SS64
FLAT_KERNEL_CS = FLAT_KERNEL_CS64
FLAT_KERNEL_SS = FLAT_KERNEL_SS64
FLAT_USER_CS64 = FLAT_RING3_CS64
FLAT_USER_SS64 = FLAT_RING3_SS64
# Xen's own ring-0 selectors (never visible to a guest as its CPL).
XEN_CS64 = 0xE008
XEN_DS64 = 0xE010
XEN_CS32 = 0xE038

# GDT: the guest may own the first 14 pages; Xen's entries start at page 14 (FIRST_RESERVED_GDT_PAGE).
FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_BYTE = FIRST_RESERVED_GDT_PAGE * 4096
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_BYTE // 8
GDT_SIZE = 16 * 4096

# The hypervisor hole: L4 slots 256..271. Guests may not map anything there.
HYPERVISOR_VIRT_START = 0xFFFF800000000000
HYPERVISOR_VIRT_END = 0xFFFF880000000000
MACH2PHYS_VIRT_START = 0xFFFF800000000000
MACH2PHYS_VIRT_END = 0xFFFF804000000000
HYPERVISOR_L4_FIRST = 256
HYPERVISOR_L4_LAST = 271



def canonical(va: int) -> bool:
    """A canonical 48-bit virtual address (bits 63..47 all equal)."""
    return va < (1 << 47) or (va >> 47) == (1 << 17) - 1


# Page-table entry bits (x86).
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_PWT = 0x008
_PAGE_PCD = 0x010
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
_PAGE_PSE = 0x080
_PAGE_PAT = 0x080
_PAGE_GLOBAL = 0x100
_PAGE_NX = 1 << 63
PTE_ADDR_MASK = 0x000FFFFFFFFFF000
L1_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_USER
L2_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_USER

# iret frame flags.
VGCF_in_syscall = 1 << 8
VGCF_IN_SYSCALL = VGCF_in_syscall
VGCF_failsafe_disables_events = 1 << 3


class trap_info(ctypes.LittleEndianStructure):
    """16 bytes: {u8 vector; u8 flags; u16 cs; unsigned long address}. flags bits 0-1 = DPL for `int N`,
    bit 2 = mask events on entry (TI_GET_IF)."""
    _fields_ = [("vector", ctypes.c_uint8), ("flags", ctypes.c_uint8), ("cs", ctypes.c_uint16),
                ("_pad", ctypes.c_uint32), ("address", ctypes.c_uint64)]


TI_DPL_MASK = 3
TI_MASK_EVENTS = 4


class iret_context(ctypes.LittleEndianStructure):
    """What HYPERVISOR_iret pops from the guest stack, lowest address first."""
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("rax", "r11", "rcx", "flags", "rip", "cs", "rflags", "rsp", "ss")]


# set_segment_base.
SEGBASE_FS = 0
SEGBASE_GS_USER = 1
SEGBASE_GS_KERNEL = 2
SEGBASE_GS_USER_SEL = 3

# CPU exception vectors.
TRAP_divide_error = 0
TRAP_debug = 1
TRAP_nmi = 2
TRAP_int3 = 3
TRAP_overflow = 4
TRAP_bounds = 5
TRAP_invalid_op = 6
TRAP_no_device = 7
TRAP_double_fault = 8
TRAP_copro_seg = 9
TRAP_invalid_tss = 10
TRAP_no_segment = 11
TRAP_stack_error = 12
TRAP_gp_fault = 13
TRAP_page_fault = 14
TRAP_spurious_int = 15
TRAP_copro_error = 16
TRAP_alignment_check = 17
TRAP_machine_check = 18
TRAP_simd_error = 19
TRAP_virtualisation = 20
TRAP_control_protection = 21
# Vectors whose exception frame carries an error code.
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
EXCEPTION_MNEMONICS = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
                       9: "#CSO", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC",
                       18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}

# Page-fault error code bits.
PFEC_present = 1
PFEC_write_access = 2
PFEC_user_mode = 4
PFEC_reserved_bit = 8
PFEC_insn_fetch = 16

# MSRs a PV guest may touch.
MSR_EFER = 0xC0000080
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_SHADOW_GS_BASE = 0xC0000102
MSR_TSC_AUX = 0xC0000103
