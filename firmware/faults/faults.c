/*
 * faults: one case per exception class and per privileged operation a PV kernel meets, checked against
 * what Xen's ABI says the guest must see.
 *
 * Each case arms a probe (where the faulting instruction is, where to resume, the stack pointer, and
 * magic values in rcx/r11), runs the instruction, and compares what the handler recorded -- vector, error
 * code, cr2 (from vcpu_info.arch.cr2 and from `mov %cr2`) and the frame Xen built: rcx, r11, rip, cs with
 * the saved upcall mask in bits 32-39, rflags with IF = !mask, rsp, ss. The handler moves rip to the
 * resume point and returns with HYPERVISOR_iret. One line per case, then event-channel, timer and
 * privileged-instruction cases, a summary, and SHUTDOWN_poweroff -- or, with `crash-in-pf` on the command
 * line, a fault inside the #PF handler that recurses until Xen cannot write a frame and crashes us.
 */
#include "console.h"
#include "hypercall.h"
#include "lib.h"

#define EFLAGS_TF (1UL << 8)
#define EFLAGS_IF (1UL << 9)
#define EFLAGS_AC (1UL << 18)
#define KERNEL_CS_RPL0 (FLAT_KERNEL_CS & ~3UL)
#define NO_EC (~0UL)
#define MAGIC_RCX "0x1c1c1c1c1c1c1c1c"
#define MAGIC_R11 "0x2b2b2b2b2b2b2b2b"
#define VEC_UPCALL 0x100
#define VEC_FAILSAFE 0x101
#define MSR_FS_BASE 0xc0000100
#define MSR_GS_BASE 0xc0000101
#define MSR_SHADOW_GS_BASE 0xc0000102
#define PTE_P 1UL
#define PTE_RW 2UL
#define PTE_U 4UL
#define PTE_A 0x20UL
#define PTE_NX (1UL << 63)

/* The frame entry.S builds: saved registers, vector, error code (0 if none), then Xen's frame. */
struct frame {
    unsigned long r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi;
    unsigned long vector, error_code, rip, cs, rflags, rsp, ss;
};

/* What the last exception looked like (written by the handler). */
static volatile struct {
    int count;
    unsigned long vector, error_code, rip, cs, rflags, rsp, ss, rcx, r11;
    unsigned long cr2_vcpu_info, cr2_mov, mask_in_handler, cr0_in_handler;
} rec;
/* The armed probe (written by the PROBE asm). */
volatile unsigned long probe_fault, probe_resume, probe_rsp;

static struct start_info *si;
static volatile struct shared_info *shared;
static char shared_info_page[4096] __attribute__((aligned(4096)));
static char gdt_page[4096] __attribute__((aligned(4096)));
static char ro_page[4096] __attribute__((aligned(4096)));
static char nx_page[4096] __attribute__((aligned(4096)));
static char gone_page[4096] __attribute__((aligned(4096)));
static char crash_stack[5 * 4096] __attribute__((aligned(4096)));   /* page 0: unmapped guard */
static int passed, failed, crash_in_pf;
static volatile int in_crash_case;

#define vi0() (&shared->vcpu_info[0])

static inline long HYPERVISOR_set_gdt(unsigned long *frames, unsigned int entries)
{ return HYPERCALL(__HYPERVISOR_set_gdt, frames, entries); }

/* ---------------------------------------------------------------------------------------------------- */
/* Probes. PROBE_ASM(setup, insn) runs `setup`, records the addresses of `insn` (label 1) and of
   what follows it (label 2) and rsp, loads the magic rcx/r11, and runs insn. */
#define PROBE_ASM(setup, insn)                                                          \
    setup "\n\t"                                                                        \
    "lea 1f(%%rip), %%rax\n\t mov %%rax, probe_fault(%%rip)\n\t"                         \
    "lea 2f(%%rip), %%rax\n\t mov %%rax, probe_resume(%%rip)\n\t"                        \
    "mov %%rsp, probe_rsp(%%rip)\n\t"                                                    \
    "movabs $" MAGIC_RCX ", %%rcx\n\t movabs $" MAGIC_R11 ", %%r11\n\t"                  \
    "1: " insn "\n2:\n\t"
#define CLOBBERS "rax", "rcx", "r11", "memory", "cc"

static void arm(void)
{
    memset((void *)&rec, 0, sizeof(rec));
    probe_fault = probe_resume = probe_rsp = 0;
}

static unsigned long read_cr(int n)
{
    unsigned long v = 0;
    switch (n) {
    case 0: __asm__ volatile("mov %%cr0,%0" : "=r"(v)); break;
    case 2: __asm__ volatile("mov %%cr2,%0" : "=r"(v)); break;
    case 3: __asm__ volatile("mov %%cr3,%0" : "=r"(v)); break;
    case 4: __asm__ volatile("mov %%cr4,%0" : "=r"(v)); break;
    }
    return v;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Events: a counter per port, the interrupted rip and the time of the last upcall. */
static volatile unsigned int upcalls[256];
static volatile unsigned long last_upcall_rip, last_upcall_ns, upcall_total;
static volatile unsigned int timer_port;
volatile unsigned long timer_fired_ns;     /* global: the compute loop reads it from asm */

static uint64_t now_ns(void)
{
    volatile struct vcpu_time_info *t = &vi0()->time;
    uint32_t version, lo, hi;
    uint64_t tsc_ts, system_time, tsc, delta, product;
    uint32_t mul;
    int8_t shift;
    do {
        version = t->version;
        rmb();
        tsc_ts = t->tsc_timestamp;
        system_time = t->system_time;
        mul = t->tsc_to_system_mul;
        shift = t->tsc_shift;
        rmb();
    } while ((version & 1) || version != t->version);
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    tsc = ((uint64_t)hi << 32) | lo;
    delta = tsc - tsc_ts;
    delta = shift < 0 ? delta >> -shift : delta << shift;
    __asm__("mul %%rdx; shrd $32,%%rdx,%%rax" : "=a"(product) : "0"(delta), "d"((uint64_t)mul));
    return system_time + product;
}

static void do_upcall(struct frame *f)
{
    volatile struct vcpu_info *v = vi0();
    unsigned long sel;
    upcall_total++;
    last_upcall_rip = f->rip;
    last_upcall_ns = now_ns();
    v->evtchn_upcall_pending = 0;
    __asm__ volatile("xchgq %0,%1" : "=r"(sel), "+m"(v->evtchn_pending_sel) : "0"(0UL) : "memory");
    while (sel) {
        unsigned long w = __builtin_ctzl(sel), bits;
        sel &= sel - 1;
        while ((bits = shared->evtchn_pending[w] & ~shared->evtchn_mask[w]) != 0) {
            unsigned long port = w * 64 + __builtin_ctzl(bits);
            __asm__ volatile("lock btrq %1,%0" : "+m"(shared->evtchn_pending[w]) : "r"(port % 64) : "memory");
            if (port < ARRAY_SIZE(upcalls))
                upcalls[port]++;
            if (port == timer_port && !timer_fired_ns)
                timer_fired_ns = last_upcall_ns;
        }
    }
}

/* ---------------------------------------------------------------------------------------------------- */
static void do_page_fault(struct frame *f);
static void record_and_resume(struct frame *f);

/* The one exception handler (entry.S). */
void trap_handler(struct frame *f)
{
    if (f->vector == VEC_UPCALL) {
        do_upcall(f);
        return;
    }
    if (f->vector == VEC_FAILSAFE) {
        printk("faults: failsafe callback entered: FAILED\n");
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
    if (f->vector == 14)
        do_page_fault(f);
    record_and_resume(f);
}

/* #PF gets its own function: in the crash-in-pf case it is what the hypervisor's report names. */
static void __attribute__((noinline)) do_page_fault(struct frame *f)
{
    if (in_crash_case) {
        /* Fault again, inside the handler, until Xen has no stack left to push a frame on. */
        (void)*(volatile char *)(gone_page + 0x40);
    }
    rec.cr2_vcpu_info = vi0()->cr2;
    rec.cr2_mov = read_cr(2);
}

static void record_and_resume(struct frame *f)
{
    rec.count++;
    rec.vector = f->vector;
    rec.error_code = f->error_code;
    rec.rip = f->rip;
    rec.cs = f->cs;
    rec.rflags = f->rflags;
    rec.rsp = f->rsp;
    rec.ss = f->ss;
    rec.rcx = f->rcx;
    rec.r11 = f->r11;
    rec.mask_in_handler = vi0()->evtchn_upcall_mask;
    if (f->vector == 7)
        rec.cr0_in_handler = read_cr(0);
    if (f->vector == 1)
        f->rflags &= ~EFLAGS_TF;
    if (f->vector == 16)
        __asm__ volatile("fnclex");
    if (f->vector == 17)
        f->rflags &= ~EFLAGS_AC;
    if (f->vector == 19) {
        uint32_t mxcsr = 0x1f80;
        __asm__ volatile("ldmxcsr %0" :: "m"(mxcsr));
    }
    if (!probe_resume || rec.count > 1) {
        printk("faults: unexpected exception %lu ec=0x%lx at rip=0x%lx (probe 0x%lx): FAILED\n",
               f->vector, f->error_code, f->rip, probe_fault);
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
    f->rip = probe_resume;
}

/* ---------------------------------------------------------------------------------------------------- */
static void result(const char *name, int ok, const char *why)
{
    if (ok)
        passed++;
    else
        failed++;
    if (ok)
        printk("%s ok\n", name);
    else
        printk("%s FAILED (%s)\n", name, why);
}

/* The CPU under us (Unicorn) does not raise #AC or #XM; real hardware under Xen does. `strict` on the
   command line makes their absence a failure. */
static int cpu_limits = 1, not_raised_count;

static void not_raised(const char *label, const char *why)
{
    not_raised_count++;
    printk("%-26s not raised: %s\n", label, why);
}

/* Check the recorded exception against what Xen must have delivered, and print one line. */
static void expect(const char *label, unsigned long vector, unsigned long ec, unsigned long rip,
                   unsigned long cr2, unsigned long saved_mask)
{
    char line[200], ecs[24], cr2s[32] = "";
    const char *why = 0;
    if (ec == NO_EC)
        snprintf(ecs, sizeof(ecs), "-");
    else
        snprintf(ecs, sizeof(ecs), "0x%lx", rec.error_code);
    if (vector == 14)
        snprintf(cr2s, sizeof(cr2s), " cr2=0x%lx", rec.cr2_mov);
    snprintf(line, sizeof(line), "%-26s vec=%lu ec=%s rip=0x%lx%s", label, rec.vector, ecs, rec.rip, cr2s);
    if (rec.count != 1)
        why = rec.count ? "more than one exception" : "no exception";
    else if (rec.vector != vector)
        why = "wrong vector";
    else if (ec != NO_EC && rec.error_code != ec)
        why = "wrong error code";
    else if (rec.rip != rip)
        why = "wrong rip";
    else if (vector == 14 && (rec.cr2_vcpu_info != cr2 || rec.cr2_mov != cr2))
        why = "wrong cr2";
    else if (rec.rcx != strtoul(MAGIC_RCX, 0, 0) || rec.r11 != strtoul(MAGIC_R11, 0, 0))
        why = "rcx/r11 in the frame are not the interrupted ones";
    else if ((rec.cs & 0xffffffffUL) != KERNEL_CS_RPL0 || (rec.cs >> 32) != saved_mask)
        why = "cs slot";
    else if ((unsigned long)!(rec.rflags & EFLAGS_IF) != saved_mask)
        why = "rflags.IF does not match the saved upcall mask";
    else if (rec.ss != FLAT_KERNEL_SS)
        why = "ss";
    else if (rec.rsp != probe_rsp)
        why = "rsp";
    result(line, !why, why);
}

/* ---------------------------------------------------------------------------------------------------- */
static void map_page(void *va, unsigned long flags, int keep_frame)
{
    unsigned long pte = keep_frame ? (virt_to_mfn(va) << 12) | flags : 0;
    long rc = HYPERVISOR_update_va_mapping((unsigned long)va, pte, UVMF_INVLPG);
    if (rc) {
        printk("faults: update_va_mapping(%p) = %ld: FAILED\n", va, rc);
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
}

static void install_gdt(void)
{
    /* Entry 2: a 32-bit writable data segment, DPL 3, NOT present (loads give #NP, or #SS for ss). */
    uint64_t *gdt = (uint64_t *)gdt_page;
    gdt[2] = 0x00cf72000000ffffUL;
    map_page(gdt_page, PTE_P | PTE_A | PTE_U, 1);          /* Xen wants GDT frames read-only */
    unsigned long frames[1] = { virt_to_mfn(gdt_page) };
    long rc = HYPERVISOR_set_gdt(frames, 512);
    if (rc) {
        printk("faults: set_gdt = %ld: FAILED\n", rc);
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
}

extern char trap_0[], trap_1[], trap_3[], trap_4[], trap_5[], trap_6[], trap_7[], trap_10[], trap_11[],
    trap_12[], trap_13[], trap_14[], trap_16[], trap_17[], trap_19[], trap_0x81[], trap_0x82[], trap_0x83[],
    trap_0x84[], trap_0x100[], trap_0x101[];
#define TI(v, dpl, fn) { v, dpl, FLAT_KERNEL_CS, (unsigned long)fn }
static struct trap_info traps[] = {
    TI(0, 0, trap_0), TI(1, 0, trap_1), TI(3, 3, trap_3), TI(4, 3, trap_4), TI(5, 3, trap_5), TI(6, 0, trap_6),
    TI(7, 0, trap_7), TI(10, 0, trap_10), TI(11, 0, trap_11), TI(12, 0, trap_12), TI(13, 0, trap_13),
    TI(14, 0, trap_14), TI(16, 0, trap_16), TI(17, 0, trap_17), TI(19, 0, trap_19),
    TI(0x81, 0, trap_0x81),                      /* int $0x81 from the kernel: not allowed (DPL 0) */
    TI(0x82, 3, trap_0x82),                      /* allowed from anywhere */
    TI(0x83, 1, trap_0x83),                      /* allowed from the guest kernel (DPL >= 1) */
    TI(0x84, 3 | 4, trap_0x84),                  /* allowed, and entered with events masked */
    { 0, 0, 0, 0 }
};

/* ---------------------------------------------------------------------------------------------------- */
static void exception_cases(void)
{
    unsigned long gone = (unsigned long)gone_page + 0x10, ro = (unsigned long)ro_page + 0x20;
    unsigned long nx = (unsigned long)nx_page, noncanon = 0x8000000000000000UL;

    arm();
    __asm__ volatile(PROBE_ASM("xor %%r8d,%%r8d; mov $1,%%eax; xor %%edx,%%edx", "divq %%r8")
                     ::: CLOBBERS, "rdx", "r8");
    expect("#DE divide by zero", 0, NO_EC, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "pushfq; orq $0x100,(%%rsp); popfq; nop") ::: CLOBBERS);
    expect("#DB single step (TF)", 1, NO_EC, probe_resume, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "int3") ::: CLOBBERS);
    expect("#BP int3", 3, NO_EC, probe_resume, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "int $3") ::: CLOBBERS);
    expect("#BP int $3", 3, NO_EC, probe_resume, 0, 0);

    arm();
    /* into is invalid in 64-bit mode: int $4 is how #OF reaches a 64-bit kernel */
    __asm__ volatile(PROBE_ASM("", "int $4") ::: CLOBBERS);
    expect("#OF int $4", 4, NO_EC, probe_resume, 0, 0);

    arm();
    /* bound is invalid in 64-bit mode (its opcode is the EVEX prefix): int $5 with a DPL 3 entry */
    __asm__ volatile(PROBE_ASM("", "int $5") ::: CLOBBERS);
    expect("#BR int $5", 5, NO_EC, probe_resume, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "ud2") ::: CLOBBERS);
    expect("#UD ud2", 6, NO_EC, probe_fault, 0, 0);

    /* #NM: the virtual CR0.TS set with fpu_taskswitch; Xen clears it when it delivers the #NM. */
    HYPERVISOR_fpu_taskswitch(1);
    unsigned long cr0_ts = read_cr(0) & 8;
    arm();
    __asm__ volatile(PROBE_ASM("", "fnop") ::: CLOBBERS);
    expect("#NM fnop with CR0.TS", 7, NO_EC, probe_fault, 0, 0);
    result("#NM cleared the virtual CR0.TS", cr0_ts && !(rec.cr0_in_handler & 8) && !(read_cr(0) & 8),
           "TS still set after #NM");
    HYPERVISOR_fpu_taskswitch(0);

    arm();
    __asm__ volatile(PROBE_ASM("mov $0x13,%%edx", "mov %%dx,%%ds") ::: CLOBBERS, "rdx");
    expect("#NP load ds, not present", 11, 0x10, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("mov $0x13,%%edx", "mov %%dx,%%ss") ::: CLOBBERS, "rdx");
    expect("#SS load ss, not present", 12, 0x10, probe_fault, 0, 0);

    printk("%-26s n/a: long mode has no task switch; nothing a 64-bit PV kernel runs raises it\n", "#TS");

    arm();
    __asm__ volatile(PROBE_ASM("mov $0x23,%%edx", "mov %%dx,%%ds") ::: CLOBBERS, "rdx");
    expect("#GP load ds, system desc", 13, 0x20, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("mov $0x0f,%%edx", "mov %%dx,%%es") ::: CLOBBERS, "rdx");
    expect("#GP load es, no LDT", 13, 0x0c, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "mov (%%rdx),%%rax") :: "d"(noncanon) : CLOBBERS);
    expect("#GP non-canonical read", 13, 0, probe_fault, 0, 0);

    /* A non-canonical address through rsp/rbp is a stack-segment access: #SS(0) on hardware. */
    arm();
    __asm__ volatile(PROBE_ASM("", "mov (%%rsp,%%rdx,1),%%rax") :: "d"(noncanon) : CLOBBERS);
    if (rec.count == 1 && rec.vector == 13 && cpu_limits)
        not_raised("#SS non-canonical stack", "the CPU model gives #GP(0) instead");
    else
        expect("#SS non-canonical stack", 12, 0, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "hlt") ::: CLOBBERS);
    expect("#GP hlt", 13, 0, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "cli") ::: CLOBBERS);
    expect("#GP cli", 13, 0, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "inb $0x80,%%al") ::: CLOBBERS);
    expect("#GP in", 13, 0, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "outb %%al,$0x80") ::: CLOBBERS);
    expect("#GP out", 13, 0, probe_fault, 0, 0);

    static const char *const base_msr_labels[] = { "#GP wrmsr FS non-canonical", "#GP wrmsr GS non-canonical",
                                                   "#GP wrmsr SGS non-canonical", "#GP wrmsr unknown MSR" };
    static const uint32_t base_msrs[] = { MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE, 0x12345678 };
    for (unsigned int i = 0; i < ARRAY_SIZE(base_msrs); i++) {
        arm();
        __asm__ volatile(PROBE_ASM("mov $0x80000000,%%edx; xor %%eax,%%eax; mov %%esi,%%r8d", "mov %%r8d,%%ecx; wrmsr")
                         :: "S"(base_msrs[i]) : CLOBBERS, "rdx", "r8");
        rec.rcx = strtoul(MAGIC_RCX, 0, 0);      /* the probe loads ecx with the MSR number itself */
        expect(base_msr_labels[i], 13, 0, probe_fault + 3, 0, 0);
    }

    arm();
    __asm__ volatile(PROBE_ASM("", "mov $0x12345678,%%ecx; rdmsr") ::: CLOBBERS, "rdx");
    /* the probe's magic rcx is replaced by the MSR number before rdmsr: check the rest by hand */
    {
        int ok = rec.count == 1 && rec.vector == 13 && rec.error_code == 0 && rec.rip == probe_fault + 5 &&
                 rec.rcx == 0x12345678;
        char line[120];
        snprintf(line, sizeof(line), "%-26s vec=%lu ec=0x%lx rip=0x%lx", "#GP rdmsr unknown MSR", rec.vector,
                 rec.error_code, rec.rip);
        result(line, ok, "expected #GP(0) at the rdmsr");
    }

    arm();
    __asm__ volatile(PROBE_ASM("", "mov (%%rdx),%%al") :: "d"(gone) : CLOBBERS);
    expect("#PF read, not present", 14, 0x0, probe_fault, gone, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "movb $1,(%%rdx)") :: "d"(gone) : CLOBBERS);
    expect("#PF write, not present", 14, 0x2, probe_fault, gone, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "movb $1,(%%rdx)") :: "d"(ro) : CLOBBERS);
    expect("#PF write, read-only", 14, 0x3, probe_fault, ro, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "jmp *%%rdx") :: "d"(gone) : CLOBBERS);
    expect("#PF exec, not present", 14, 0x10, gone, gone, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "jmp *%%rdx") :: "d"(nx) : CLOBBERS);
    expect("#PF exec, NX page", 14, 0x11, nx, nx, 0);

    /* #MF: unmask x87 zero-divide, divide 1 by 0; the next waiting instruction raises it. */
    uint16_t fcw = 0x037b;
    __asm__ volatile("fninit; fldcw %0; fld1; fldz; fdivrp" :: "m"(fcw));
    arm();
    __asm__ volatile(PROBE_ASM("", "fwait") ::: CLOBBERS);
    expect("#MF x87 divide by zero", 16, NO_EC, probe_fault, 0, 0);
    __asm__ volatile("fninit");

    /* #AC: CR0.AM is set for PV guests; EFLAGS.AC at CPL 3 makes a misaligned access fault. */
    arm();
    __asm__ volatile(PROBE_ASM("pushfq; orq $0x40000,(%%rsp); popfq", "movl (%%rdx),%%eax")
                     :: "d"((unsigned long)ro_page + 1) : CLOBBERS);
    __asm__ volatile("pushfq; andq $~0x40000,(%%rsp); popfq" ::: "memory", "cc");
    if (rec.count || !cpu_limits)
        expect("#AC misaligned, EFLAGS.AC", 17, 0, probe_fault, 0, 0);
    else
        not_raised("#AC misaligned, EFLAGS.AC", "the CPU model does not check alignment");

    /* #XM: unmask SSE zero-divide in MXCSR (CR4.OSXMMEXCPT is set for PV guests). */
    uint32_t mxcsr = 0x1f80 & ~0x200;
    __asm__ volatile("ldmxcsr %0" :: "m"(mxcsr));
    arm();
    __asm__ volatile(PROBE_ASM("mov $0x3f800000,%%eax; movd %%eax,%%xmm1; xorps %%xmm0,%%xmm0",
                               "divss %%xmm0,%%xmm1") ::: CLOBBERS);
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    int zero_divide_flagged = mxcsr & 4;
    mxcsr = 0x1f80;
    __asm__ volatile("ldmxcsr %0" :: "m"(mxcsr));
    if (rec.count || !cpu_limits)
        expect("#XM SSE divide by zero", 19, NO_EC, probe_fault, 0, 0);
    else
        not_raised("#XM SSE divide by zero", zero_divide_flagged ? "MXCSR.ZE set but no #XM from the CPU model"
                                                                  : "the CPU model keeps no SSE exception state");
}

static void software_interrupt_cases(void)
{
    arm();
    __asm__ volatile(PROBE_ASM("", "int $0x80") ::: CLOBBERS);
    expect("int $0x80, no trap entry", 13, (0x80 << 3) | 2, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "int $0x81") ::: CLOBBERS);
    expect("int $0x81, DPL 0", 13, (0x81 << 3) | 2, probe_fault, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "int $0x82") ::: CLOBBERS);
    expect("int $0x82, DPL 3", 0x82, NO_EC, probe_resume, 0, 0);

    arm();
    __asm__ volatile(PROBE_ASM("", "int $0x83") ::: CLOBBERS);
    expect("int $0x83, DPL 1", 0x83, NO_EC, probe_resume, 0, 0);

    /* A trap entry with flag 4 masks events on entry; iret restores the mask from the frame's IF. */
    arm();
    __asm__ volatile(PROBE_ASM("", "int $0x84") ::: CLOBBERS);
    expect("int $0x84, masks events", 0x84, NO_EC, probe_resume, 0, 0);
    result("  handler ran masked, iret unmasked", rec.mask_in_handler == 1 && vi0()->evtchn_upcall_mask == 0,
           "upcall mask");

    /* With events masked, the frame says so: saved mask in cs bits 32-39, IF clear; iret keeps it. */
    vi0()->evtchn_upcall_mask = 1;
    arm();
    __asm__ volatile(PROBE_ASM("", "int3") ::: CLOBBERS);
    int still_masked = vi0()->evtchn_upcall_mask == 1;
    vi0()->evtchn_upcall_mask = 0;
    expect("#BP int3, events masked", 3, NO_EC, probe_resume, 0, 1);
    result("  iret kept events masked", still_masked, "iret unmasked");

    /* int $4 reaches the guest even with DPL 0: Xen's own gate for #OF is DPL 3, as for int3. */
    struct trap_info of_dpl0[] = { TI(4, 0, trap_4), { 0, 0, 0, 0 } };
    HYPERVISOR_set_trap_table(of_dpl0);
    arm();
    __asm__ volatile(PROBE_ASM("", "int $4") ::: CLOBBERS);
    expect("#OF int $4, DPL 0 entry", 4, NO_EC, probe_resume, 0, 0);
    struct trap_info br_dpl0[] = { TI(5, 0, trap_5), { 0, 0, 0, 0 } };
    HYPERVISOR_set_trap_table(br_dpl0);
    arm();
    __asm__ volatile(PROBE_ASM("", "int $5") ::: CLOBBERS);
    expect("int $5, DPL 0 entry", 13, (5 << 3) | 2, probe_fault, 0, 0);
    HYPERVISOR_set_trap_table(traps);
}

/* ---------------------------------------------------------------------------------------------------- */
static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "0"(leaf), "2"(0));
}

static void privileged_cases(void)
{
    uint32_t a, b, c, d;
    char sig[13], line[160];

    cpuid(0x40000000, &a, &b, &c, &d);
    memcpy(sig, &b, 4), memcpy(sig + 4, &c, 4), memcpy(sig + 8, &d, 4), sig[12] = 0;
    snprintf(line, sizeof(line), "cpuid 0x40000000: %s max=0x%x", sig, a);
    result(line, !strcmp(sig, "XenVMMXenVMM") && a >= 0x40000001, "not Xen's signature");

    long version = HYPERVISOR_xen_version(XENVER_version, 0);
    cpuid(0x40000001, &a, &b, &c, &d);
    snprintf(line, sizeof(line), "cpuid 0x40000001: version %u.%u", a >> 16, a & 0xffff);
    result(line, (long)a == version, "differs from xen_version");

    /* The forced-emulation prefix: ud2a; .ascii "xen"; cpuid -- emulated cpuid, even of native leaves. */
    a = 0x40000000;
    __asm__ volatile("ud2a; .ascii \"xen\"; cpuid" : "+a"(a), "=b"(b), "=c"(c), "=d"(d) : "2"(0));
    memcpy(sig, &b, 4), memcpy(sig + 4, &c, 4), memcpy(sig + 8, &d, 4), sig[12] = 0;
    snprintf(line, sizeof(line), "forced emulation cpuid: %s", sig);
    result(line, !strcmp(sig, "XenVMMXenVMM"), "forced-emulation prefix not honoured");

    arm();
    __asm__ volatile(PROBE_ASM("", "ud2a; .ascii \"xen\"; nop") ::: CLOBBERS);
    expect("#UD forced prefix + nop", 6, NO_EC, probe_fault, 0, 0);

    /* Segment-base MSRs: emulated, canonical values only. */
    static const struct { uint32_t msr; const char *name; } msrs[] = {
        { MSR_FS_BASE, "FS_BASE" }, { MSR_GS_BASE, "GS_BASE" }, { MSR_SHADOW_GS_BASE, "SHADOW_GS_BASE" } };
    for (unsigned int i = 0; i < ARRAY_SIZE(msrs); i++) {
        uint64_t want = 0x00007f0000001000UL + i * 0x1000, got;
        uint32_t lo, hi;
        __asm__ volatile("wrmsr" :: "c"(msrs[i].msr), "a"((uint32_t)want), "d"((uint32_t)(want >> 32)));
        __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msrs[i].msr));
        got = ((uint64_t)hi << 32) | lo;
        __asm__ volatile("wrmsr" :: "c"(msrs[i].msr), "a"(0), "d"(0));
        snprintf(line, sizeof(line), "wrmsr/rdmsr %s = 0x%lx", msrs[i].name, got);
        result(line, got == want, "value not kept");
    }

    /* Control registers: cr3 is the machine address of our L4 (the mfn of pt_base). */
    unsigned long cr0 = read_cr(0), cr2 = read_cr(2), cr3 = read_cr(3), cr4 = read_cr(4);
    unsigned long want_cr3 = virt_to_mfn((void *)si->pt_base) << 12;
    snprintf(line, sizeof(line), "mov from cr0=0x%lx cr2=0x%lx cr3=0x%lx cr4=0x%lx", cr0, cr2, cr3, cr4);
    result(line, cr3 == want_cr3 && (cr0 & 0x80000001UL) == 0x80000001UL && (cr4 & 0x20) &&
           cr2 == vi0()->cr2, "cr3 is not MFN(L4) << 12, or cr0/cr4/cr2 are off");

    /* rdtsc/rdtscp: the virtual TSC runs at 1 GHz with system time. */
    uint32_t lo1, hi1, lo2, hi2, aux;
    uint64_t t0 = now_ns();
    __asm__ volatile("rdtsc" : "=a"(lo1), "=d"(hi1));
    __asm__ volatile("rdtscp" : "=a"(lo2), "=d"(hi2), "=c"(aux));
    uint64_t tsc1 = ((uint64_t)hi1 << 32) | lo1, tsc2 = ((uint64_t)hi2 << 32) | lo2;
    snprintf(line, sizeof(line), "rdtsc/rdtscp monotonic, tsc_aux=%u", aux);
    result(line, tsc2 >= tsc1 && tsc1 >= t0 && tsc1 - t0 < 10000 && aux == 0, "not monotonic / off system time");
}

/* ---------------------------------------------------------------------------------------------------- */
static long evtchn(int cmd, void *arg) { return HYPERVISOR_event_channel_op(cmd, arg); }

static void event_cases(void)
{
    char line[160];
    struct evtchn_bind_ipi ipi = { .vcpu = 0 };
    long rc = evtchn(EVTCHNOP_bind_ipi, &ipi);
    unsigned int p = ipi.port;

    /* Mask the port ourselves (the mask bitmap is ours), send: pending, but no upcall. */
    __asm__ volatile("lock btsq %1,%0" : "+m"(shared->evtchn_mask[p / 64]) : "r"((unsigned long)p % 64));
    unsigned int before = upcalls[p];
    struct evtchn_send send = { .port = p };
    evtchn(EVTCHNOP_send, &send);
    int pending = (shared->evtchn_pending[p / 64] >> (p % 64)) & 1;
    unsigned int while_masked = upcalls[p] - before;
    /* EVTCHNOP_unmask: Xen sees it pending and raises the upcall, taken on the way back from the call. */
    struct evtchn_unmask un = { .port = p };
    evtchn(EVTCHNOP_unmask, &un);
    unsigned int after_unmask = upcalls[p] - before;
    int cleared = !((shared->evtchn_pending[p / 64] >> (p % 64)) & 1);
    snprintf(line, sizeof(line), "evtchn ipi port %u masked: send -> pending=%d upcalls=%u; unmask -> upcalls=%u",
             p, pending, while_masked, after_unmask);
    result(line, rc == 0 && pending && while_masked == 0 && after_unmask == 1 && cleared, "masking");

    /* An interdomain channel to ourselves: alloc_unbound, bind_interdomain, send each way. */
    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };
    long rc1 = evtchn(EVTCHNOP_alloc_unbound, &au);
    struct evtchn_bind_interdomain bi = { .remote_dom = DOMID_SELF, .remote_port = au.port };
    long rc2 = evtchn(EVTCHNOP_bind_interdomain, &bi);
    unsigned int a0 = upcalls[au.port], b0 = upcalls[bi.local_port];
    send.port = bi.local_port;
    evtchn(EVTCHNOP_send, &send);
    unsigned int a1 = upcalls[au.port] - a0, b1 = upcalls[bi.local_port] - b0;
    send.port = au.port;
    evtchn(EVTCHNOP_send, &send);
    unsigned int b2 = upcalls[bi.local_port] - b0;
    struct evtchn_status st = { .dom = DOMID_SELF, .port = bi.local_port };
    long rc3 = evtchn(EVTCHNOP_status, &st);
    snprintf(line, sizeof(line), "evtchn loopback %u<->%u: send %u -> %u upcall=%u, send %u -> %u upcall=%u",
             au.port, bi.local_port, bi.local_port, au.port, a1, au.port, bi.local_port, b2);
    result(line, !rc1 && !rc2 && !rc3 && a1 == 1 && b1 == 0 && b2 == 1 && st.status == EVTCHNSTAT_interdomain &&
           st.u.interdomain.port == au.port, "loopback channel");
}

static void block_until_timer(void)
{
    while (!timer_fired_ns) {
        vi0()->evtchn_upcall_mask = 1;  /* no upcall between the check and the block */
        if (timer_fired_ns)
            break;
        HYPERVISOR_sched_op(SCHEDOP_block, 0);  /* unmasks; the upcall runs before it returns */
    }
    vi0()->evtchn_upcall_mask = 0;
}

static void timer_cases(void)
{
    char line[160];
    struct evtchn_bind_virq bv = { .virq = VIRQ_TIMER, .vcpu = 0 };
    HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0);     /* only the timers we ask for */
    evtchn(EVTCHNOP_bind_virq, &bv);
    timer_port = bv.port;

    uint64_t deadline = now_ns() + 5000000;
    timer_fired_ns = 0;
    HYPERVISOR_set_timer_op(deadline);
    block_until_timer();
    snprintf(line, sizeof(line), "set_timer_op(+5ms): fired %lu ns after the deadline",
             (unsigned long)(timer_fired_ns - deadline));
    result(line, timer_fired_ns >= deadline && timer_fired_ns - deadline < 20000, "fired early or late");

    struct vcpu_set_singleshot_timer ss = { .timeout_abs_ns = now_ns() - 1000, .flags = VCPU_SSHOTTMR_future };
    long rc = HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss);
    snprintf(line, sizeof(line), "singleshot in the past with SSHOTTMR_future -> %ld", rc);
    result(line, rc == -62, "expected -ETIME");

    deadline = now_ns() + 2000000;
    ss.timeout_abs_ns = deadline;
    timer_fired_ns = 0;
    rc = HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss);
    block_until_timer();
    snprintf(line, sizeof(line), "singleshot(+2ms): fired %lu ns after the deadline",
             (unsigned long)(timer_fired_ns - deadline));
    result(line, !rc && timer_fired_ns >= deadline && timer_fired_ns - deadline < 20000, "fired early or late");

    /* Compute with a timer armed: the upcall must interrupt the loop, not wait for a hypercall. */
    unsigned long loop_start, loop_end, iterations;
    timer_fired_ns = 0;
    deadline = now_ns() + 200000;
    HYPERVISOR_set_timer_op(deadline);
    __asm__ volatile("lea 1f(%%rip),%0\n\t lea 2f(%%rip),%1\n\t xor %2,%2\n"
                     "1: inc %2\n\t cmpq $0,timer_fired_ns(%%rip)\n\t jne 2f\n\t cmp $50000000,%2\n\t jb 1b\n"
                     "2:" : "=&r"(loop_start), "=&r"(loop_end), "=&r"(iterations) :: "memory", "cc");
    snprintf(line, sizeof(line), "timer during a compute loop: upcall %lu ns after the deadline, in the loop",
             (unsigned long)(timer_fired_ns - deadline));
    result(line, timer_fired_ns >= deadline && timer_fired_ns - deadline < 20000 && iterations < 50000000 &&
           last_upcall_rip >= loop_start && last_upcall_rip <= loop_end, "the upcall did not interrupt the loop");
}

/* ---------------------------------------------------------------------------------------------------- */
static void crash_case(void *unused)
{
    printk("crash-in-pf: faulting in the #PF handler until Xen cannot push a frame\n");
    in_crash_case = 1;
    (void)*(volatile char *)(gone_page + 0x40);
    printk("crash-in-pf: still alive: FAILED\n");
    HYPERVISOR_shutdown(SHUTDOWN_poweroff);
}

extern void call_on_stack(void *top, void (*fn)(void *), void *arg);

static int cmdline_has(const char *word)
{
    const char *p = si->cmd_line;
    size_t n = strlen(word);
    while (*p) {
        while (*p == ' ')
            p++;
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        if ((size_t)(p - w) == n && !strncmp(w, word, n))
            return 1;
    }
    return 0;
}

void guest_main(struct start_info *start)
{
    si = start;
    virt_base = VIRT_BASE;
    phys_to_machine_mapping = (unsigned long *)si->mfn_list;
    console_ring_init(mfn_to_virt(si->console.domU.mfn), si->console.domU.evtchn);
    crash_in_pf = cmdline_has("crash-in-pf");
    cpu_limits = !cmdline_has("strict");
    printk("faults: exceptions, events and privileged operations of a PV guest\n");

    /* shared_info over a page of ours, the trap table, the event callback, then events on. */
    if (HYPERVISOR_update_va_mapping((unsigned long)shared_info_page, si->shared_info | 7, UVMF_INVLPG))
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    shared = (volatile struct shared_info *)shared_info_page;
    HYPERVISOR_set_trap_table(traps);
    HYPERVISOR_set_callbacks((unsigned long)trap_0x100, (unsigned long)trap_0x101, 0);
    vi0()->evtchn_upcall_mask = 0;
    (void)HYPERVISOR_xen_version(XENVER_version, 0);      /* take anything already pending */

    /* The pages the #PF cases need, and a GDT with a not-present segment. */
    map_page(ro_page, PTE_P | PTE_A | PTE_U, 1);
    map_page(nx_page, PTE_P | PTE_RW | PTE_A | PTE_U | PTE_NX, 1);
    map_page(gone_page, 0, 0);
    install_gdt();

    exception_cases();
    software_interrupt_cases();
    privileged_cases();
    event_cases();
    timer_cases();

    printk("faults: %d/%d cases ok, %d not raised by this CPU\n", passed, passed + failed, not_raised_count);
    if (crash_in_pf) {
        map_page(crash_stack, 0, 0);                       /* guard page below the stack */
        call_on_stack(crash_stack + sizeof(crash_stack), crash_case, 0);
    }
    printk("faults: %s\n", failed ? "crashing" : "powering off");
    HYPERVISOR_shutdown(failed ? SHUTDOWN_crash : SHUTDOWN_poweroff);
    for (;;)
        ;
}
