/* Hostile arguments: every bad pointer must come back as -EFAULT, unknown hypercalls and sub-ops as
 * -ENOSYS -- never a crash of the domain, never a hang. */
#include "selftest.h"

#define EFAULT 14
#define ENOSYS 38

static const char *const UNMAPPED = (const char *)0x7ff000000000UL;
static const char *const NONCANONICAL = (const char *)0x8000000000000000UL;
static const char *const HOLE = (const char *)0xffff800000000000UL;   /* mapped read-only: the M2P */

void run_badptr(void)
{
    char buf[64];
    expect("console_io_write_unmapped", HYPERVISOR_console_io(CONSOLEIO_write, 16, UNMAPPED), -EFAULT);
    expect("console_io_write_noncanonical", HYPERVISOR_console_io(CONSOLEIO_write, 16, NONCANONICAL), -EFAULT);
    expect("console_io_write_hole", HYPERVISOR_console_io(CONSOLEIO_write, 16, HOLE), -EFAULT);
    /* A huge count running off the end of the bootstrap mapping (VIRT_BASE + 4 MiB): the two mapped bytes
     * are written, then -EFAULT. */
    expect("console_io_write_huge", HYPERVISOR_console_io(CONSOLEIO_write, 0x7fffffff,
                                                          (const char *)(VIRT_BASE + 0x400000 - 2)), -EFAULT);
    hv_write("\n", 1);
    expect("console_io_write_ok", HYPERVISOR_console_io(CONSOLEIO_write, 3, "ok\n"), 0);
    expect("console_io_read_unmapped", HYPERVISOR_console_io(CONSOLEIO_read, 16, UNMAPPED), 0);
    expect("xen_version_extraversion_unmapped", HYPERVISOR_xen_version(XENVER_extraversion, (void *)UNMAPPED),
           -EFAULT);
    expect("xen_version_capabilities_hole", HYPERVISOR_xen_version(XENVER_capabilities, (void *)HOLE), -EFAULT);
    expect("xen_version_compile_info_readonly", HYPERVISOR_xen_version(XENVER_compile_info, (void *)si->pt_base),
           -EFAULT);
    expect("xen_version_get_features_unmapped", HYPERVISOR_xen_version(XENVER_get_features, (void *)UNMAPPED),
           -EFAULT);
    expect("xen_version_changeset_ok", HYPERVISOR_xen_version(XENVER_changeset, buf), 0);
    expect("xen_version_unknown", HYPERVISOR_xen_version(0x4242, buf), -ENOSYS);
    expect("memory_op_memory_map_unmapped", HYPERVISOR_memory_op(XENMEM_memory_map, (void *)UNMAPPED), -EFAULT);
    expect("memory_op_current_reservation_unmapped",
           HYPERVISOR_memory_op(XENMEM_current_reservation, (void *)UNMAPPED), -EFAULT);
    expect("memory_op_unknown", HYPERVISOR_memory_op(60, buf), -ENOSYS);
    expect("event_channel_op_unmapped", HYPERVISOR_event_channel_op(EVTCHNOP_status, (void *)UNMAPPED), -EFAULT);
    expect("sched_op_shutdown_unmapped", HYPERVISOR_sched_op(SCHEDOP_shutdown, (void *)UNMAPPED), -EFAULT);
    expect("set_trap_table_unmapped", HYPERVISOR_set_trap_table((void *)UNMAPPED), -EFAULT);
    expect("mmu_update_unmapped", HYPERVISOR_mmu_update((void *)UNMAPPED, 1, 0, DOMID_SELF), -EFAULT);
    expect("mmuext_op_unmapped", HYPERVISOR_mmuext_op((void *)UNMAPPED, 1, 0, DOMID_SELF), -EFAULT);
    expect("multicall_unmapped", HYPERVISOR_multicall((void *)UNMAPPED, 1), -EFAULT);
    expect("callback_op_unmapped", HYPERVISOR_callback_op(CALLBACKOP_register, (void *)UNMAPPED), -EFAULT);
    expect("vcpu_op_unmapped", HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, (void *)UNMAPPED), -EFAULT);
    expect("grant_table_op_unmapped", HYPERVISOR_grant_table_op(GNTTABOP_setup_table, (void *)UNMAPPED, 1),
           -EFAULT);
    expect("hypercall_unknown_60", _hypercall(60, 0, 0, 0, 0, 0), -ENOSYS);
    expect("hypercall_unknown_127", _hypercall(127, 0, 0, 0, 0, 0), -ENOSYS);
    expect("still_alive", 1, 1);
}
