"""public/xen.h: hypercall numbers (their names, handlers and sub-ops are the families' tables in
hypervisor/), VIRQs, MMU operations, flush flags, vm_assist types, domain ids."""
from __future__ import annotations

import ctypes

# Hypercall numbers.
HYPERVISOR_set_trap_table = 0
HYPERVISOR_mmu_update = 1
HYPERVISOR_set_gdt = 2
HYPERVISOR_stack_switch = 3
HYPERVISOR_set_callbacks = 4
HYPERVISOR_fpu_taskswitch = 5
HYPERVISOR_sched_op_compat = 6
HYPERVISOR_platform_op = 7
HYPERVISOR_set_debugreg = 8
HYPERVISOR_get_debugreg = 9
HYPERVISOR_update_descriptor = 10
HYPERVISOR_memory_op = 12
HYPERVISOR_multicall = 13
HYPERVISOR_update_va_mapping = 14
HYPERVISOR_set_timer_op = 15
HYPERVISOR_event_channel_op_compat = 16
HYPERVISOR_xen_version = 17
HYPERVISOR_console_io = 18
HYPERVISOR_physdev_op_compat = 19
HYPERVISOR_grant_table_op = 20
HYPERVISOR_vm_assist = 21
HYPERVISOR_update_va_mapping_otherdomain = 22
HYPERVISOR_iret = 23
HYPERVISOR_vcpu_op = 24
HYPERVISOR_set_segment_base = 25
HYPERVISOR_mmuext_op = 26
HYPERVISOR_xsm_op = 27
HYPERVISOR_nmi_op = 28
HYPERVISOR_sched_op = 29
HYPERVISOR_callback_op = 30
HYPERVISOR_xenoprof_op = 31
HYPERVISOR_event_channel_op = 32
HYPERVISOR_physdev_op = 33
HYPERVISOR_hvm_op = 34
HYPERVISOR_sysctl = 35
HYPERVISOR_domctl = 36
HYPERVISOR_kexec_op = 37
HYPERVISOR_tmem_op = 38
HYPERVISOR_argo_op = 39
HYPERVISOR_xenpmu_op = 40
HYPERVISOR_dm_op = 41
HYPERVISOR_hypfs_op = 42

NR_HYPERCALLS = 64          # the hypercall page holds 4096 / 32 = 128 slots; Xen fills the first 64

# Virtual interrupts.
VIRQ_TIMER = 0
VIRQ_DEBUG = 1
VIRQ_CONSOLE = 2
VIRQ_DOM_EXC = 3
VIRQ_TBUF = 4
VIRQ_DEBUGGER = 6
VIRQ_XENOPROF = 7
VIRQ_CON_RING = 8
VIRQ_PCPU_STATE = 9
VIRQ_MEM_EVENT = 10
VIRQ_ARGO = 11
VIRQ_ENOMEM = 12
VIRQ_XENPMU = 13
NR_VIRQS = 24
VIRQ_NAMES = {v: k for k, v in globals().items() if k.startswith("VIRQ_") and k != "VIRQ_NAMES"}
# Per-vCPU VIRQs can be bound once per vCPU; the others are global (bound on vCPU 0 only).
PER_VCPU_VIRQS = frozenset({VIRQ_TIMER, VIRQ_DEBUG, VIRQ_XENOPROF, VIRQ_XENPMU})

# mmu_update commands (ptr[1:0]).
MMU_NORMAL_PT_UPDATE = 0
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2
MMU_PT_UPDATE_NO_TRANSLATE = 3

# mmuext_op commands.
MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7
MMUEXT_TLB_FLUSH_MULTI = 8
MMUEXT_INVLPG_MULTI = 9
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_INVLPG_ALL = 11
MMUEXT_FLUSH_CACHE = 12
MMUEXT_SET_LDT = 13
MMUEXT_NEW_USER_BASEPTR = 15
MMUEXT_CLEAR_PAGE = 16
MMUEXT_COPY_PAGE = 17
MMUEXT_FLUSH_CACHE_GLOBAL = 18
MMUEXT_MARK_SUPER = 19
MMUEXT_UNMARK_SUPER = 20
MMUEXT_NAMES = {v: k for k, v in globals().items() if k.startswith("MMUEXT_") and k != "MMUEXT_NAMES"}


class mmu_update(ctypes.LittleEndianStructure):
    _fields_ = [("ptr", ctypes.c_uint64), ("val", ctypes.c_uint64)]


class mmuext_op(ctypes.LittleEndianStructure):
    """{u32 cmd; union{mfn, linear_addr} arg1; union{u32 nr_ents, void *vcpumask} arg2} = 24 bytes on x86_64."""
    _fields_ = [("cmd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("arg1", ctypes.c_uint64), ("arg2", ctypes.c_uint64)]


class multicall_entry(ctypes.LittleEndianStructure):
    _fields_ = [("op", ctypes.c_uint64), ("result", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6)]


# update_va_mapping flags.
UVMF_NONE = 0
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_FLUSHTYPE_MASK = 3
UVMF_MULTI = 0
UVMF_LOCAL = 0
UVMF_ALL = 4

# console_io commands.
CONSOLEIO_write = 0
CONSOLEIO_read = 1

# vm_assist.
VMASST_CMD_enable = 0
VMASST_CMD_disable = 1
VMASST_TYPE_4gb_segments = 0
VMASST_TYPE_4gb_segments_notify = 1
VMASST_TYPE_writable_pagetables = 2
VMASST_TYPE_pae_extended_cr3 = 3
VMASST_TYPE_architectural_iopl = 4
VMASST_TYPE_runstate_update_flag = 5
VMASST_TYPE_m2p_strict = 32
# The types a 64-bit PV guest may toggle (Xen's arch_vm_assist_valid_mask for PV).
VMASST_VALID_PV64 = frozenset({VMASST_TYPE_4gb_segments, VMASST_TYPE_4gb_segments_notify,
                               VMASST_TYPE_writable_pagetables, VMASST_TYPE_pae_extended_cr3,
                               VMASST_TYPE_architectural_iopl, VMASST_TYPE_runstate_update_flag,
                               VMASST_TYPE_m2p_strict})

# Domain ids.
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_IDLE = 0x7FFF

NR_EVENT_CHANNELS = 64 * 64      # 2-level ABI on x86_64: 64 selector bits x 64-bit words
MAX_VIRT_CPUS = 32
