/* Scenario `xtfgaps`: ABI details the Xen Test Framework's pv64 tests depend on, checked in our own words.
 *  - GNTTABOP_set_version: 1 is accepted; 2 on a v1-only table answers -ENOSYS (as a Xen limited to
 *    grant table v1 does), any other number -EINVAL; the current version is written back every time.
 *  - A %cr4 write never faults: bits the guest does not control are dropped, DE is the guest's to set.
 *  - CPUID 7.0:EBX.FSGSBASE is not offered (the instructions' canonical-address #GP is not modelled). */
#include "selftest.h"

#define EINVAL 22
#define ENOSYS 38
#define GNTTABOP_set_version 8
#define CR4_DE       (1UL << 3)
#define CR4_FSGSBASE (1UL << 16)

static unsigned long get_cr4(void)
{
    unsigned long v;
    __asm__ volatile("mov %%cr4, %0" : "=r"(v));
    return v;
}

static void set_cr4(unsigned long v)
{
    __asm__ volatile("mov %0, %%cr4" :: "r"(v) : "memory");
}

void run_xtfgaps(void)
{
    uint32_t version = 1;
    expect("gnttab_set_version_1", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &version, 1), 0);
    expect("gnttab_version_after_1", version, 1);
    version = 2;
    expect("gnttab_set_version_2", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &version, 1), -ENOSYS);
    expect("gnttab_version_after_2", version, 1);
    version = 3;
    expect("gnttab_set_version_3", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &version, 1), -EINVAL);

    unsigned long cr4 = get_cr4();
    set_cr4(cr4 | CR4_DE | CR4_FSGSBASE);              /* #GP here would crash the domain */
    unsigned long now = get_cr4();
    expect("cr4_de_set", !!(now & CR4_DE), 1);
    expect("cr4_fsgsbase_dropped", !!(now & CR4_FSGSBASE), 0);
    expect("cr4_rest_kept", now & ~CR4_DE, cr4 & ~CR4_DE);
    set_cr4((cr4 & ~(1UL << 7)) | (1UL << 20));          /* clear PGE, set SMEP: both dropped */
    expect("cr4_foreign_bits_dropped", get_cr4(), cr4);

    unsigned int a = 7, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    expect("cpuid7_fsgsbase", b & 1, 0);
}
