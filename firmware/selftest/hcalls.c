/* Scenario `hypercalls`: the values xen_version, memory_op and friends hand out, vm_assist, the
 * machine-to-phys update, and the scheduler calls that return. */
#include "selftest.h"

#define EINVAL 22
#define ENOSYS 38
#define EPERM 1

struct compile_info { char compiler[64], compile_by[16], compile_domain[32], compile_date[32]; };

void run_hypercalls(void)
{
    char buf[1024];
    struct compile_info ci;
    struct xen_feature_info fi = { .submap_idx = 0 };
    unsigned char handle[16];
    unsigned long virt_start = 0;

    long v = HYPERVISOR_xen_version(XENVER_version, 0);
    printk("version = %lx\n", v);
    HYPERVISOR_xen_version(XENVER_extraversion, buf);
    printk("extraversion = %s\n", buf);
    expect("compile_info", HYPERVISOR_xen_version(XENVER_compile_info, &ci), 0);
    printk("compiler = %s\n", ci.compiler);
    expect("capabilities", HYPERVISOR_xen_version(XENVER_capabilities, buf), 0);
    printk("caps = %s\n", buf);
    expect("changeset_rc", HYPERVISOR_xen_version(XENVER_changeset, buf), 0);
    expect("platform_parameters", HYPERVISOR_xen_version(XENVER_platform_parameters, &virt_start), 0);
    printk("virt_start = %lx\n", virt_start);
    expect("get_features", HYPERVISOR_xen_version(XENVER_get_features, &fi), 0);
    printk("features0 = %x\n", fi.submap);
    fi.submap_idx = 7;
    HYPERVISOR_xen_version(XENVER_get_features, &fi);
    printk("features7 = %x\n", fi.submap);
    expect("guest_handle", HYPERVISOR_xen_version(XENVER_guest_handle, handle), 0);
    printk("handle = %02x%02x%02x%02x\n", handle[0], handle[1], handle[2], handle[3]);
    expect("commandline_denied", HYPERVISOR_xen_version(9, buf), -EPERM);

    domid_t self = DOMID_SELF;
    printk("maximum_ram_page = %ld\n", HYPERVISOR_memory_op(XENMEM_maximum_ram_page, 0));
    expect("current_reservation", HYPERVISOR_memory_op(XENMEM_current_reservation, &self), si->nr_pages);
    expect("maximum_reservation", HYPERVISOR_memory_op(XENMEM_maximum_reservation, &self), si->nr_pages);
    domid_t other = 3;
    expect("reservation_other_domain", HYPERVISOR_memory_op(XENMEM_current_reservation, &other), -3);
    struct e820entry map[4];
    struct xen_memory_map mm = { .nr_entries = 4, .buffer = map };
    expect("memory_map", HYPERVISOR_memory_op(XENMEM_memory_map, &mm), 0);
    expect("memory_map_entries", mm.nr_entries, 1);
    expect("memory_map_ram", map[0].addr == 0 && map[0].size == si->nr_pages * PAGE_SIZE && map[0].type == 1, 1);

    expect("vm_assist_enable", HYPERVISOR_vm_assist(VMASST_CMD_enable, 2), 0);
    expect("vm_assist_disable", HYPERVISOR_vm_assist(VMASST_CMD_disable, 2), 0);
    expect("vm_assist_bad_type", HYPERVISOR_vm_assist(VMASST_CMD_enable, 17), -EINVAL);
    expect("vm_assist_bad_cmd", HYPERVISOR_vm_assist(7, 2), -ENOSYS);

    /* MMU_MACHPHYS_UPDATE: point our own frame's M2P entry elsewhere and back; a foreign frame is refused. */
    const unsigned long *m2p = (const unsigned long *)MACH2PHYS_VIRT_START;
    unsigned long mfn = virt_to_mfn(si), pfn = m2p[mfn];
    struct mmu_update u = { .ptr = (mfn << PAGE_SHIFT) | MMU_MACHPHYS_UPDATE, .val = 0x12345 };
    expect("machphys_update", HYPERVISOR_mmu_update(&u, 1, 0, DOMID_SELF), 0);
    expect("m2p_reads_new_value", m2p[mfn], 0x12345);
    u.val = pfn;
    HYPERVISOR_mmu_update(&u, 1, 0, DOMID_SELF);
    expect("m2p_restored", m2p[mfn], pfn);
    unsigned long *l4 = (unsigned long *)si->pt_base;
    u.ptr = (l4[256] & 0x000ffffffffff000UL) | MMU_MACHPHYS_UPDATE;
    expect("machphys_update_foreign", HYPERVISOR_mmu_update(&u, 1, 0, DOMID_SELF), -EINVAL);

    expect("sched_yield", HYPERVISOR_sched_op(SCHEDOP_yield, 0), 0);
    expect("sched_unknown", HYPERVISOR_sched_op(42, 0), -ENOSYS);
    expect("vcpu_is_up", HYPERVISOR_vcpu_op(VCPUOP_is_up, 0, 0), 1);
    expect("vcpu_op_no_vcpu", HYPERVISOR_vcpu_op(VCPUOP_is_up, 4, 0), -2);
}
