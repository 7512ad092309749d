/*
 * Exceptions, as Mini-OS's arch/x86/traps.c: a virtual IDT handed to Xen with set_trap_table (vector,
 * the least-privileged ring allowed to `int` it, cs, handler), the event and failsafe callbacks with
 * set_callbacks, and handlers that report and crash the domain -- Mini-OS has nothing to recover.
 */
#include "minios.h"

void divide_error(void);
void debug(void);
void int3(void);
void overflow(void);
void bounds(void);
void invalid_op(void);
void device_not_available(void);
void coprocessor_segment_overrun(void);
void invalid_TSS(void);
void segment_not_present(void);
void stack_segment(void);
void general_protection(void);
void page_fault(void);
void spurious_interrupt_bug(void);
void coprocessor_error(void);
void alignment_check(void);
void simd_coprocessor_error(void);
void hypervisor_callback(void);
void failsafe_callback(void);

static void dump_regs(struct pt_regs *regs)
{
    printk("Thread: %s\n", current ? current->name : "*NONE*");
    printk("RIP: %04lx:[<%016lx>]\n", regs->cs & 0xffff, regs->rip);
    printk("RSP: %04lx:%016lx  EFLAGS: %08lx\n", regs->ss, regs->rsp, regs->eflags);
    printk("RAX: %016lx RBX: %016lx RCX: %016lx\n", regs->rax, regs->rbx, regs->rcx);
    printk("RDX: %016lx RSI: %016lx RDI: %016lx\n", regs->rdx, regs->rsi, regs->rdi);
    printk("RBP: %016lx R08: %016lx R09: %016lx\n", regs->rbp, regs->r8, regs->r9);
    printk("R10: %016lx R11: %016lx R12: %016lx\n", regs->r10, regs->r11, regs->r12);
    printk("R13: %016lx R14: %016lx R15: %016lx\n", regs->r13, regs->r14, regs->r15);
}

static void do_trap(int trapnr, const char *str, struct pt_regs *regs, unsigned long error_code)
{
    printk("FATAL:  Unhandled Trap %d (%s), error code=0x%lx\n", trapnr, str, error_code);
    printk("Regs address %p\n", (void *)regs);
    dump_regs(regs);
    do_exit();
}

#define DO_ERROR(trapnr, str, name) \
    void do_##name(struct pt_regs *regs, unsigned long error_code) { do_trap(trapnr, str, regs, error_code); }

DO_ERROR(0, "divide error", divide_error)
DO_ERROR(3, "int3", int3)
DO_ERROR(4, "overflow", overflow)
DO_ERROR(5, "bounds", bounds)
DO_ERROR(6, "invalid operand", invalid_op)
DO_ERROR(7, "device not available", device_not_available)
DO_ERROR(9, "coprocessor segment overrun", coprocessor_segment_overrun)
DO_ERROR(10, "invalid TSS", invalid_TSS)
DO_ERROR(11, "segment not present", segment_not_present)
DO_ERROR(12, "stack segment", stack_segment)
DO_ERROR(17, "alignment check", alignment_check)

static unsigned long read_cr2(void)
{
    /* A PV kernel may read cr2 (Xen emulates it); vcpu_info.arch.cr2 holds the same value. */
    unsigned long cr2;
    __asm__ volatile("mov %%cr2,%0" : "=r"(cr2));
    return cr2;
}

static int handling_pg_fault;

void do_page_fault(struct pt_regs *regs, unsigned long error_code)
{
    unsigned long addr = read_cr2();
    if (handling_pg_fault++) {
        printk("Page fault in pagetable walk (access to invalid memory?).\n");
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
    printk("Page fault at linear address %lx, rip %lx, regs %p, sp %lx, our_sp %p, code %lx\n",
           addr, regs->rip, (void *)regs, regs->rsp, (void *)&addr, error_code);
    dump_regs(regs);
    HYPERVISOR_shutdown(SHUTDOWN_crash);
    handling_pg_fault--;
}

void do_general_protection(struct pt_regs *regs, unsigned long error_code)
{
    printk("GPF rip: %lx, error_code=%lx\n", regs->rip, error_code);
    dump_regs(regs);
    HYPERVISOR_shutdown(SHUTDOWN_crash);
}

void do_debug(struct pt_regs *regs)
{
    printk("Debug exception\n");
    regs->eflags &= ~0x100UL;           /* TF */
    dump_regs(regs);
    do_exit();
}

void do_coprocessor_error(struct pt_regs *regs)
{
    printk("Copro error\n");
    dump_regs(regs);
    do_exit();
}

void do_simd_coprocessor_error(struct pt_regs *regs)
{
    printk("SIMD copro error\n");
}

void do_spurious_interrupt_bug(struct pt_regs *regs)
{
}

/* The virtual IDT. The second field is the DPL: int3, into and bound may be raised by `int` from any
   ring, the rest only by the CPU. */
static struct trap_info trap_table[] = {
    {  0, 0, FLAT_KERNEL_CS, (unsigned long)divide_error                },
    {  1, 0, FLAT_KERNEL_CS, (unsigned long)debug                       },
    {  3, 3, FLAT_KERNEL_CS, (unsigned long)int3                        },
    {  4, 3, FLAT_KERNEL_CS, (unsigned long)overflow                    },
    {  5, 3, FLAT_KERNEL_CS, (unsigned long)bounds                      },
    {  6, 0, FLAT_KERNEL_CS, (unsigned long)invalid_op                  },
    {  7, 0, FLAT_KERNEL_CS, (unsigned long)device_not_available        },
    {  9, 0, FLAT_KERNEL_CS, (unsigned long)coprocessor_segment_overrun },
    { 10, 0, FLAT_KERNEL_CS, (unsigned long)invalid_TSS                 },
    { 11, 0, FLAT_KERNEL_CS, (unsigned long)segment_not_present         },
    { 12, 0, FLAT_KERNEL_CS, (unsigned long)stack_segment               },
    { 13, 0, FLAT_KERNEL_CS, (unsigned long)general_protection          },
    { 14, 0, FLAT_KERNEL_CS, (unsigned long)page_fault                  },
    { 15, 0, FLAT_KERNEL_CS, (unsigned long)spurious_interrupt_bug      },
    { 16, 0, FLAT_KERNEL_CS, (unsigned long)coprocessor_error           },
    { 17, 0, FLAT_KERNEL_CS, (unsigned long)alignment_check             },
    { 19, 0, FLAT_KERNEL_CS, (unsigned long)simd_coprocessor_error      },
    {  0, 0, 0, 0 }
};

void trap_init(void)
{
    HYPERVISOR_set_trap_table(trap_table);
    HYPERVISOR_set_callbacks((unsigned long)hypervisor_callback, (unsigned long)failsafe_callback, 0);
}

static void do_stack_walk(unsigned long frame_base)
{
    unsigned long *frame = (void *)frame_base;
    printk("base is 0x%lx caller is 0x%lx\n", frame_base, frame[1]);
    if (frame[0])
        do_stack_walk(frame[0]);
}

/* Mini-OS's do_exit: say so, walk the stack, and crash the domain. */
void do_exit(void)
{
    unsigned long bp;
    printk("Do_exit called!\n");
    __asm__ volatile("movq %%rbp,%0" : "=r"(bp));
    do_stack_walk(bp);
    for (;;)
        HYPERVISOR_shutdown(SHUTDOWN_crash);
}
