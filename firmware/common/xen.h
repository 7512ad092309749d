/*
 * The parts of Xen's public interface (xen/include/public/) our sample guests use, written for miniguest's
 * firmware from the published ABI: numbers, struct layouts and rules, x86_64 only.
 */
#ifndef FIRMWARE_XEN_H
#define FIRMWARE_XEN_H

#define __HYPERVISOR_set_trap_table        0
#define __HYPERVISOR_mmu_update            1
#define __HYPERVISOR_set_gdt               2
#define __HYPERVISOR_stack_switch          3
#define __HYPERVISOR_set_callbacks         4
#define __HYPERVISOR_fpu_taskswitch        5
#define __HYPERVISOR_sched_op_compat       6
#define __HYPERVISOR_update_descriptor    10
#define __HYPERVISOR_memory_op            12
#define __HYPERVISOR_multicall            13
#define __HYPERVISOR_update_va_mapping    14
#define __HYPERVISOR_set_timer_op         15
#define __HYPERVISOR_event_channel_op_compat 16
#define __HYPERVISOR_xen_version          17
#define __HYPERVISOR_console_io           18
#define __HYPERVISOR_grant_table_op       20
#define __HYPERVISOR_vm_assist            21
#define __HYPERVISOR_iret                 23
#define __HYPERVISOR_vcpu_op              24
#define __HYPERVISOR_set_segment_base     25
#define __HYPERVISOR_mmuext_op            26
#define __HYPERVISOR_sched_op             29
#define __HYPERVISOR_callback_op          30
#define __HYPERVISOR_event_channel_op     32
#define __HYPERVISOR_physdev_op           33

/* ELF notes (public/elfnote.h). */
#define XEN_ELFNOTE_ENTRY            1
#define XEN_ELFNOTE_HYPERCALL_PAGE   2
#define XEN_ELFNOTE_VIRT_BASE        3
#define XEN_ELFNOTE_PADDR_OFFSET     4
#define XEN_ELFNOTE_XEN_VERSION      5
#define XEN_ELFNOTE_GUEST_OS         6
#define XEN_ELFNOTE_GUEST_VERSION    7
#define XEN_ELFNOTE_LOADER           8
#define XEN_ELFNOTE_FEATURES        10

/* Selectors and the hypervisor hole (arch-x86/xen-x86_64.h). */
#define FLAT_KERNEL_CS   0xe033
#define FLAT_KERNEL_SS   0xe02b
#define FLAT_USER_CS     0xe033
#define FLAT_USER_SS     0xe02b
#define HYPERVISOR_VIRT_START 0xFFFF800000000000UL
#define MACH2PHYS_VIRT_START  0xFFFF800000000000UL
#define VGCF_in_syscall  (1 << 8)

#ifndef __ASSEMBLY__
#include <stdint.h>

typedef uint16_t domid_t;
typedef uint32_t evtchn_port_t;
#define DOMID_SELF 0x7FF0U

/* console_io */
#define CONSOLEIO_write 0
#define CONSOLEIO_read  1

/* xen_version */
#define XENVER_version        0
#define XENVER_extraversion   1
#define XENVER_compile_info   2
#define XENVER_capabilities   3
#define XENVER_changeset      4
#define XENVER_platform_parameters 5
#define XENVER_get_features   6
#define XENVER_pagesize       7
#define XENVER_guest_handle   8
struct xen_feature_info { unsigned int submap_idx; uint32_t submap; };

/* sched_op */
#define SCHEDOP_yield    0
#define SCHEDOP_block    1
#define SCHEDOP_shutdown 2
#define SCHEDOP_poll     3
#define SHUTDOWN_poweroff 0
#define SHUTDOWN_reboot   1
#define SHUTDOWN_suspend  2
#define SHUTDOWN_crash    3
struct sched_shutdown { unsigned int reason; };
struct sched_poll { evtchn_port_t *ports; unsigned int nr_ports; uint64_t timeout; };

/* memory_op */
#define XENMEM_maximum_ram_page    2
#define XENMEM_current_reservation 3
#define XENMEM_maximum_reservation 4
#define XENMEM_memory_map          9
struct e820entry { uint64_t addr; uint64_t size; uint32_t type; } __attribute__((packed));
struct xen_memory_map { unsigned int nr_entries; void *buffer; };

/* mmu_update / mmuext_op / update_va_mapping */
#define MMU_NORMAL_PT_UPDATE 0
#define MMU_MACHPHYS_UPDATE  1
struct mmu_update { uint64_t ptr; uint64_t val; };
#define MMUEXT_PIN_L1_TABLE    0
#define MMUEXT_PIN_L2_TABLE    1
#define MMUEXT_PIN_L3_TABLE    2
#define MMUEXT_PIN_L4_TABLE    3
#define MMUEXT_UNPIN_TABLE     4
#define MMUEXT_NEW_BASEPTR     5
#define MMUEXT_TLB_FLUSH_LOCAL 6
#define MMUEXT_INVLPG_LOCAL    7
#define MMUEXT_NEW_USER_BASEPTR 15
struct mmuext_op { unsigned int cmd; union { unsigned long mfn; unsigned long linear_addr; } arg1;
                   union { unsigned int nr_ents; const void *vcpumask; } arg2; };
#define UVMF_NONE      0
#define UVMF_TLB_FLUSH 1
#define UVMF_INVLPG    2

/* vm_assist */
#define VMASST_CMD_enable  0
#define VMASST_CMD_disable 1

/* event channels */
#define EVTCHNOP_bind_interdomain 0
#define EVTCHNOP_bind_virq        1
#define EVTCHNOP_close            3
#define EVTCHNOP_send             4
#define EVTCHNOP_status           5
#define EVTCHNOP_alloc_unbound    6
#define EVTCHNOP_bind_ipi         7
#define EVTCHNOP_bind_vcpu        8
#define EVTCHNOP_unmask           9
#define EVTCHNOP_reset           10
#define EVTCHNSTAT_closed       0
#define EVTCHNSTAT_unbound      1
#define EVTCHNSTAT_interdomain  2
#define EVTCHNSTAT_virq         4
#define EVTCHNSTAT_ipi          5
#define VIRQ_TIMER    0
#define VIRQ_DEBUG    1
#define VIRQ_CONSOLE  2
struct evtchn_alloc_unbound { domid_t dom, remote_dom; evtchn_port_t port; };
struct evtchn_bind_interdomain { domid_t remote_dom; evtchn_port_t remote_port; evtchn_port_t local_port; };
struct evtchn_bind_virq { uint32_t virq; uint32_t vcpu; evtchn_port_t port; };
struct evtchn_bind_ipi { uint32_t vcpu; evtchn_port_t port; };
struct evtchn_send { evtchn_port_t port; };
struct evtchn_close { evtchn_port_t port; };
struct evtchn_unmask { evtchn_port_t port; };
struct evtchn_bind_vcpu { evtchn_port_t port; uint32_t vcpu; };
struct evtchn_status {
    domid_t dom; evtchn_port_t port; uint32_t status; uint32_t vcpu;
    union { struct { domid_t dom; } unbound; struct { domid_t dom; evtchn_port_t port; } interdomain;
            uint32_t pirq; uint32_t virq; } u;
};

/* callbacks and traps */
#define CALLBACKTYPE_event    0
#define CALLBACKTYPE_failsafe 1
#define CALLBACKTYPE_syscall  2
#define CALLBACKOP_register   0
#define CALLBACKOP_unregister 1
#define CALLBACKF_mask_events 1
struct callback_register { uint16_t type; uint16_t flags; unsigned long address; };
struct callback_unregister { uint16_t type; uint16_t _unused; };
struct trap_info { uint8_t vector; uint8_t flags; uint16_t cs; unsigned long address; };

/* vcpu_op */
#define VCPUOP_is_up                 3
#define VCPUOP_set_periodic_timer    6
#define VCPUOP_stop_periodic_timer   7
#define VCPUOP_set_singleshot_timer  8
#define VCPUOP_stop_singleshot_timer 9
#define VCPU_SSHOTTMR_future (1 << 0)
struct vcpu_set_singleshot_timer { uint64_t timeout_abs_ns; uint32_t flags; };
struct vcpu_set_periodic_timer { uint64_t period_ns; };

/* grant tables */
#define GNTTABOP_setup_table 2
#define GNTTABOP_query_size  6
struct gnttab_setup_table { domid_t dom; uint32_t nr_frames; int16_t status; unsigned long *frame_list; };

/* start_info and shared_info (x86_64) */
struct start_info {
    char magic[32];
    unsigned long nr_pages;
    unsigned long shared_info;
    uint32_t flags;
    unsigned long store_mfn;
    uint32_t store_evtchn;
    union { struct { unsigned long mfn; uint32_t evtchn; } domU;
            struct { uint32_t info_off; uint32_t info_size; } dom0; } console;
    unsigned long pt_base;
    unsigned long nr_pt_frames;
    unsigned long mfn_list;
    unsigned long mod_start;
    unsigned long mod_len;
    char cmd_line[1024];
    unsigned long first_p2m_pfn;
    unsigned long nr_p2m_frames;
};

struct vcpu_time_info {
    uint32_t version; uint32_t pad0; uint64_t tsc_timestamp; uint64_t system_time;
    uint32_t tsc_to_system_mul; int8_t tsc_shift; uint8_t flags; uint8_t pad1[2];
};
struct vcpu_info {
    uint8_t evtchn_upcall_pending;
    uint8_t evtchn_upcall_mask;
    unsigned long evtchn_pending_sel;
    unsigned long cr2;
    unsigned long pad;
    struct vcpu_time_info time;
};
struct shared_info {
    struct vcpu_info vcpu_info[32];
    unsigned long evtchn_pending[64];
    unsigned long evtchn_mask[64];
    uint32_t wc_version, wc_sec, wc_nsec, wc_sec_hi;
    unsigned long max_pfn, pfn_to_mfn_frame_list_list, nmi_reason;
};

/* io/console.h */
typedef uint32_t XENCONS_RING_IDX;
struct xencons_interface {
    char in[1024];
    char out[2048];
    XENCONS_RING_IDX in_cons, in_prod;
    XENCONS_RING_IDX out_cons, out_prod;
};

/* io/xs_wire.h */
struct xenstore_domain_interface {
    char req[1024];
    char rsp[1024];
    uint32_t req_cons, req_prod;
    uint32_t rsp_cons, rsp_prod;
    uint32_t server_features, connection, error;
};
struct xsd_sockmsg { uint32_t type, req_id, tx_id, len; };

#endif /* __ASSEMBLY__ */
#endif
