/* Scenario `xtfgaps`: ABI details the Xen Test Framework's pv64 tests depend on, checked in our own words.
 *  - GNTTABOP_set_version: 1 is accepted; 2 on a v1-only table answers -ENOSYS (as a Xen limited to
 *    grant table v1 does), any other number -EINVAL; the current version is written back every time.
 *  - A %cr4 write never faults: bits the guest does not control are dropped, DE is the guest's to set.
 *  - CPUID 7.0:EBX.FSGSBASE is not offered (the instructions' canonical-address #GP is not modelled).
 *  - mov to/from %dr0-7 is emulated for the guest kernel (DR0 as scratch storage, DR6/DR7 defaults).
 *  - An iret inside a multicall is performed and ends the batch (XSA-213): the multicall returns the
 *    restored rax, and the entries after it never run. */
#include "selftest.h"

#define EINVAL 22

struct multicall_entry { unsigned long op; unsigned long result; unsigned long args[6]; };
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

/* multicall([iret back to label 1 in kernel mode with rax 0x1e7, ...]) by a raw syscall. */
static long multicall_iret(struct multicall_entry *m, unsigned long n)
{
    long rc;
    __asm__ volatile("mov %%rsp, %%r12\n\t"
                     "push $0xe02b\n\t"            /* ss */
                     "push %%r12\n\t"              /* rsp: as before the frame */
                     "pushf\n\t"                   /* rflags */
                     "push $0xe030\n\t"            /* cs, RPL 0: stay in kernel mode */
                     "lea 1f(%%rip), %%rax\n\t"
                     "push %%rax\n\t"              /* rip */
                     "push $0\n\tpush $0\n\tpush $0\n\t"  /* flags, rcx, r11 */
                     "push $0x1e7\n\t"             /* rax */
                     "mov $13, %%eax\n\t"          /* __HYPERVISOR_multicall */
                     "syscall\n"
                     "1:"
                     : "=a"(rc), "+D"(m), "+S"(n) : : "rcx", "r11", "r12", "rdx", "r10", "r8", "memory");
    return rc;
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

    unsigned long dr;
    __asm__ volatile("mov %0, %%dr0" :: "r"(0x12345678UL));
    __asm__ volatile("mov %%dr0, %0" : "=r"(dr));
    expect("dr0_readback", dr, 0x12345678);
    __asm__ volatile("mov %%dr6, %0" : "=r"(dr));
    expect("dr6_default", dr, 0xffff0ff0);
    __asm__ volatile("mov %%dr7, %0" : "=r"(dr));
    expect("dr7_default", dr, 0x400);

    static struct multicall_entry m[2];
    m[0].op = 23;                                       /* __HYPERVISOR_iret */
    m[1].op = 17;                                       /* __HYPERVISOR_xen_version */
    m[1].result = 0x5a5a;
    expect("multicall_iret_rc", multicall_iret(m, 2), 0x1e7);
    expect("multicall_iret_result", m[0].result, 0x1e7);
    expect("multicall_after_iret_not_run", m[1].result, 0x5a5a);
}
