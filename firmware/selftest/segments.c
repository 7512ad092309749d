/* Scenario `segments`: multicall with per-call results, set_segment_base, update_descriptor + a selector
 * from our own GDT, fpu_taskswitch seen through CR0. */
#include "selftest.h"

#define EINVAL 22
#define ENOSYS 38
#define MSR_FS_BASE 0xc0000100
#define MSR_GS_BASE 0xc0000101
#define MSR_SHADOW_GS_BASE 0xc0000102

struct multicall_entry { unsigned long op; unsigned long result; unsigned long args[6]; };

static unsigned long rdmsr(unsigned int msr)
{
    unsigned int lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((unsigned long)hi << 32) | lo;
}

static unsigned long fs_word(void)
{
    unsigned long v;
    __asm__ volatile("mov %%fs:0, %0" : "=r"(v));
    return v;
}

static unsigned long gdt_page[512] __attribute__((aligned(4096)));

static long HYPERVISOR_update_descriptor_(unsigned long ma, unsigned long desc)
{ return HYPERCALL(__HYPERVISOR_update_descriptor, ma, desc); }
static long HYPERVISOR_set_gdt_(unsigned long *frames, unsigned int entries)
{ return HYPERCALL(__HYPERVISOR_set_gdt, frames, entries); }

void run_segments(void)
{
    /* multicall: each entry's result is written back; a failing entry does not stop the others. */
    struct multicall_entry calls[3] = {
        { __HYPERVISOR_xen_version, 0, { XENVER_version, 0 } },
        { 60, 0, { 0 } },                                    /* no such hypercall */
        { __HYPERVISOR_xen_version, 0, { XENVER_pagesize, 0 } },
    };
    expect("multicall", HYPERVISOR_multicall(calls, 3), 0);
    expect("multicall_result0", calls[0].result, HYPERVISOR_xen_version(XENVER_version, 0));
    expect("multicall_result1", (long)calls[1].result, -ENOSYS);
    expect("multicall_result2", calls[2].result, 4096);

    /* set_segment_base: FS through a memory access and the MSR, the kernel GS base, the canonical rule. */
    static unsigned long fs_target = 0x1234abcd;
    expect("set_fs_base", HYPERVISOR_set_segment_base(0, (unsigned long)&fs_target), 0);
    expect("fs_access", fs_word(), 0x1234abcd);
    expect("fs_base_msr", rdmsr(MSR_FS_BASE) == (unsigned long)&fs_target, 1);
    expect("set_gs_kernel", HYPERVISOR_set_segment_base(2, 0x5000), 0);
    expect("gs_base_msr", rdmsr(MSR_GS_BASE), 0x5000);
    expect("set_gs_user", HYPERVISOR_set_segment_base(1, 0x6000), 0);
    expect("shadow_gs_msr", rdmsr(MSR_SHADOW_GS_BASE), 0x6000);
    expect("set_fs_noncanonical", HYPERVISOR_set_segment_base(0, 0x8000000000000000UL), -EINVAL);
    expect("set_segment_base_bad_which", HYPERVISOR_set_segment_base(9, 0), -EINVAL);

    /* update_descriptor into a page we own: a flat data segment is accepted (DPL forced to 3), a call gate
     * or TSS is not; then that page becomes our GDT and its selector loads. */
    unsigned long ma = (virt_to_mfn(gdt_page) << PAGE_SHIFT) + 8 * 5;
    unsigned long data_dpl0 = 0x00cf92000000ffffUL;         /* flat read/write data, DPL 0 */
    expect("update_descriptor_data", HYPERVISOR_update_descriptor_(ma, data_dpl0), 0);
    expect("descriptor_dpl_forced_3", (gdt_page[5] >> 45) & 3, 3);
    expect("update_descriptor_tss", HYPERVISOR_update_descriptor_(ma + 8, 0x00008b000000ffffUL), -EINVAL);
    expect("update_descriptor_misaligned", HYPERVISOR_update_descriptor_(ma + 4, data_dpl0), -EINVAL);
    /* The GDT frame must not be writable for set_gdt: map it read-only first. */
    expect("gdt_page_readonly", HYPERVISOR_update_va_mapping((unsigned long)gdt_page,
           (virt_to_mfn(gdt_page) << PAGE_SHIFT) | 5, UVMF_INVLPG), 0);
    unsigned long frame = virt_to_mfn(gdt_page);
    expect("set_gdt", HYPERVISOR_set_gdt_(&frame, 512), 0);
    unsigned short sel = (5 << 3) | 3, got;
    __asm__ volatile("mov %1, %%es\n\tmov %%es, %0" : "=r"(got) : "r"(sel));
    expect("load_own_selector", got, sel);
    __asm__ volatile("mov %0, %%es" :: "r"(0));
    expect("set_gdt_too_many", HYPERVISOR_set_gdt_(&frame, 8192), -EINVAL);

    /* fpu_taskswitch: CR0.TS as the guest reads it. */
    unsigned long cr0;
    HYPERVISOR_fpu_taskswitch(1);
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    expect("cr0_ts_set", (cr0 >> 3) & 1, 1);
    HYPERVISOR_fpu_taskswitch(0);
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    expect("cr0_ts_clear", (cr0 >> 3) & 1, 0);
}
