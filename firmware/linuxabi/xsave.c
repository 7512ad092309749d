/*
 * linuxabi `xsave` scenario: the CPUID and XSAVE view Linux 6.1 relies on. Enlightened (forced-emulation)
 * cpuid shows OSXSAVE to the kernel before it sets CR4.OSXSAVE, native cpuid only after; xgetbv works from
 * the start (Xen keeps its own CR4.OSXSAVE on, XCR0 = x87|SSE); xsetbv is #UD until the guest's
 * CR4.OSXSAVE is set, then emulated with XCR0 checked against the policy (#GP otherwise); xsave/xrstor
 * round-trip an SSE register. Features Xen hides from PV guests (PSE, PSE36, PGE, MTRR, VME) are absent.
 */
#include "console.h"
#include "hypercall.h"
#include "lib.h"

void expect(const char *what, long got, long want);
extern void gp_handler(void), ud_handler(void);
volatile long trapped_vector = -1;
volatile long skip_bytes = 3;           /* length of the instruction a handled fault steps over */

/* #GP / #UD from the guest kernel: note the vector, step over the 3-byte instruction (xsetbv), and return
 * with a native iretq (RPL 3 restored in the frame: Xen clears it in the cs slot for a kernel frame). */
__asm__(
    ".globl gp_handler\n"
    "gp_handler:\n"
    "    movq $13, trapped_vector(%rip)\n"
    "    pop %rcx\n"
    "    pop %r11\n"
    "    add $8, %rsp\n"
    "    jmp 1f\n"
    ".globl ud_handler\n"
    "ud_handler:\n"
    "    movq $6, trapped_vector(%rip)\n"
    "    pop %rcx\n"
    "    pop %r11\n"
    "1:  push %rax\n"
    "    mov skip_bytes(%rip), %rax\n"
    "    add %rax, 8(%rsp)\n"
    "    pop %rax\n"
    "    orq $3, 8(%rsp)\n"
    "    orq $3, 32(%rsp)\n"
    "    iretq\n");

static void cpuid(unsigned int leaf, unsigned int sub, unsigned int *r, int enlightened)
{
    if (enlightened)
        __asm__ volatile("ud2a; .ascii \"xen\"; cpuid"
                         : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
    else
        __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static unsigned long xgetbv(unsigned int index)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(index));
    return (unsigned long)hi << 32 | lo;
}

/* The vector xsetbv raised, or 0 if it completed. */
static long xsetbv(unsigned int index, unsigned long value)
{
    trapped_vector = 0;
    __asm__ volatile("xsetbv" :: "c"(index), "a"((unsigned int)value), "d"((unsigned int)(value >> 32))
                     : "memory");
    return trapped_vector;
}

static unsigned char area[1024] __attribute__((aligned(64)));

void install_traps(void)
{
    static struct trap_info traps[] = {
        { 13, 0, FLAT_KERNEL_CS, 0 },
        { 6, 0, FLAT_KERNEL_CS, 0 },
        { 0, 0, 0, 0 },
    };
    traps[0].address = (unsigned long)gp_handler;
    traps[1].address = (unsigned long)ud_handler;
    expect("set_trap_table", HYPERVISOR_set_trap_table(traps), 0);
}

void run_xsave(void)
{
    unsigned int r[4];
    install_traps();
    skip_bytes = 3;

    cpuid(1, 0, r, 1);
    printk("leaf1_ecx = %x\n", r[2]);
    printk("leaf1_edx = %x\n", r[3]);
    expect("xsave_offered", !!(r[2] & (1 << 26)), 1);
    expect("osxsave_enlightened_before_cr4", !!(r[2] & (1 << 27)), 1);
    expect("pse_hidden", r[3] & ((1 << 3) | (1 << 17)), 0);
    expect("pge_mtrr_vme_hidden", r[3] & ((1 << 13) | (1 << 12) | (1 << 1)), 0);
    expect("hypervisor_bit", !!(r[2] & (1u << 31)), 1);
    cpuid(1, 0, r, 0);
    expect("osxsave_native_before_cr4", !!(r[2] & (1 << 27)), 0);
    cpuid(0xd, 0, r, 0);
    expect("xstate_xcr0_mask", r[0], 3);
    expect("xstate_size", r[1], 576);

    expect("xgetbv_before", xgetbv(0), 3);
    expect("xsetbv_without_cr4_osxsave", xsetbv(0, 3), 6);

    unsigned long cr4;
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    printk("cr4 = %lx\n", cr4);
    __asm__ volatile("mov %0, %%cr4" :: "r"(cr4 | (1UL << 18) | (1UL << 7)));   /* OSXSAVE; PGE is Xen's */
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    printk("cr4_after = %lx\n", cr4);
    expect("cr4_osxsave_kept", !!(cr4 & (1UL << 18)), 1);
    cpuid(1, 0, r, 0);
    expect("osxsave_native_after_cr4", !!(r[2] & (1 << 27)), 1);

    expect("xsetbv_ymm_not_offered", xsetbv(0, 7), 13);
    expect("xsetbv_no_x87", xsetbv(0, 2), 13);
    expect("xsetbv_bad_index", xsetbv(1, 1), 13);
    expect("xsetbv_x87_only", xsetbv(0, 1), 0);
    expect("xgetbv_x87_only", xgetbv(0), 1);
    expect("xsetbv_x87_sse", xsetbv(0, 3), 0);
    expect("xgetbv_after", xgetbv(0), 3);

    /* xsave/xrstor of %xmm0 through the area. */
    static const unsigned long pattern[2] = { 0x0123456789abcdefUL, 0xfedcba9876543210UL };
    unsigned long back[2];
    __asm__ volatile("movdqu %0, %%xmm0" :: "m"(pattern));
    __asm__ volatile("xsave %0" : "=m"(area) : "a"(3), "d"(0) : "memory");
    __asm__ volatile("pxor %%xmm0, %%xmm0" ::);
    __asm__ volatile("xrstor %0" :: "m"(area), "a"(3), "d"(0));
    __asm__ volatile("movdqu %%xmm0, %0" : "=m"(back));
    expect("xsave_xrstor_xmm0", back[0] == pattern[0] && back[1] == pattern[1], 1);
    expect("xstate_bv_sse", !!(area[512] & 2), 1);
}
