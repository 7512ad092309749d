/*
 * linuxabi `hcalls` scenario: the hypercalls and MSRs Linux 6.1 uses early, answered as Xen 4.17+ answers a
 * PV domU: set/get_debugreg, xenpmu_op with the vPMU off, PHYSDEVOP_pirq_eoi_gmfn_v2,
 * VCPUOP_register_vcpu_time_memory_area, and rdmsr/wrmsr of APIC_BASE, MISC_ENABLE, the microcode
 * revision, ARCH_CAPABILITIES, TSC_AUX (read back by rdtscp) and PAT.
 */
#include "console.h"
#include "hypercall.h"
#include "lib.h"

void expect(const char *what, long got, long want);
void install_traps(void);
extern volatile long trapped_vector, skip_bytes;

#define __HYPERVISOR_set_debugreg 8
#define __HYPERVISOR_get_debugreg 9
#define __HYPERVISOR_physdev_op_  33
#define __HYPERVISOR_xenpmu_op    40
#define PHYSDEVOP_pirq_eoi_gmfn_v2 28
#define VCPUOP_register_vcpu_time_memory_area 13

static unsigned long rdmsr(unsigned int msr)
{
    unsigned int lo = 0, hi = 0;
    trapped_vector = 0;
    skip_bytes = 2;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
    return (unsigned long)hi << 32 | lo;
}

static long wrmsr(unsigned int msr, unsigned long value)
{
    trapped_vector = 0;
    skip_bytes = 2;
    __asm__ volatile("wrmsr" :: "c"(msr), "a"((unsigned int)value), "d"((unsigned int)(value >> 32)) : "memory");
    return trapped_vector;
}

static unsigned char eoi_page[4096] __attribute__((aligned(4096)));
static unsigned char time_page[4096] __attribute__((aligned(4096)));

void run_hcalls(struct start_info *si)
{
    install_traps();

    expect("set_debugreg_dr7", HYPERCALL(__HYPERVISOR_set_debugreg, 7, 0x400), 0);
    expect("set_debugreg_dr0", HYPERCALL(__HYPERVISOR_set_debugreg, 0, 0x1234000), 0);
    expect("get_debugreg_dr0", HYPERCALL(__HYPERVISOR_get_debugreg, 0), 0x1234000);
    expect("get_debugreg_dr6", HYPERCALL(__HYPERVISOR_get_debugreg, 6), 0xffff0ff0);
    expect("get_debugreg_dr7", HYPERCALL(__HYPERVISOR_get_debugreg, 7), 0x400);
    expect("set_debugreg_xen_address", HYPERCALL(__HYPERVISOR_set_debugreg, 1, 0xffff800000000000UL), -1);
    expect("set_debugreg_dr6_upper", HYPERCALL(__HYPERVISOR_set_debugreg, 6, 1UL << 32), -22);
    expect("set_debugreg_dr7_gd", HYPERCALL(__HYPERVISOR_set_debugreg, 7, 0x2400), -1);
    expect("set_debugreg_bad_reg", HYPERCALL(__HYPERVISOR_set_debugreg, 8, 0), -19);
    expect("get_debugreg_bad_reg", HYPERCALL(__HYPERVISOR_get_debugreg, 9), -19);

    expect("xenpmu_op", HYPERCALL(__HYPERVISOR_xenpmu_op, 0, 0), -95);

    unsigned long gmfn = virt_to_mfn(eoi_page);
    expect("pirq_eoi_gmfn_v2", HYPERCALL(__HYPERVISOR_physdev_op_, PHYSDEVOP_pirq_eoi_gmfn_v2, &gmfn), 0);
    expect("pirq_eoi_gmfn_v2_again", HYPERCALL(__HYPERVISOR_physdev_op_, PHYSDEVOP_pirq_eoi_gmfn_v2, &gmfn), -16);
    unsigned long bad = 1UL << 40;
    expect("pirq_eoi_gmfn_v2_not_ours", HYPERCALL(__HYPERVISOR_physdev_op_, PHYSDEVOP_pirq_eoi_gmfn_v2, &bad), -22);

    unsigned long area = (unsigned long)time_page;
    expect("time_area", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_time_memory_area, 0, &area), 0);
    const unsigned int *t = (const unsigned int *)time_page;
    expect("time_area_version_even", t[0] & 1, 0);
    expect("time_area_version_set", t[0] != 0, 1);
    expect("time_area_mul", t[6], 1L << 31);
    unsigned long xen_va = 0xffff800000001000UL;
    expect("time_area_xen_address", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_time_memory_area, 0, &xen_va), -14);

    expect("apic_base", rdmsr(0x1b), 0xfee00900);
    expect("misc_enable", rdmsr(0x1a0), 0x801801);
    expect("ucode_rev_write_0", wrmsr(0x8b, 0), 0);
    expect("ucode_rev_write_1", wrmsr(0x8b, 1), 13);
    expect("ucode_rev", rdmsr(0x8b), 0x100000000);
    expect("arch_capabilities", rdmsr(0x10a), 0);
    expect("arch_capabilities_write", wrmsr(0x10a, 0), 13);
    expect("tsc_aux_write", wrmsr(0xc0000103, 42), 0);
    expect("tsc_aux_read", rdmsr(0xc0000103), 42);
    unsigned int aux;
    __asm__ volatile("rdtscp" : "=c"(aux) :: "rax", "rdx");
    expect("rdtscp_aux", aux, 42);
    expect("tsc_aux_wide", wrmsr(0xc0000103, 1UL << 32), 13);
    expect("pat", rdmsr(0x277), 0x050100070406);
    expect("pat_write", wrmsr(0x277, 0x050100070406), 13);
    expect("smi_count", (rdmsr(0x34), trapped_vector), 13);
    (void)si;
}
