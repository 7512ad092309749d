/*
 * linuxabi `dbreg` scenario: the guest's own breakpoints fire as on the CPU Xen runs on. A data breakpoint
 * (DR7 R/W 01 write, 11 read/write) is a trap: #DB after the access, %dr6 B0-3 saying which. An instruction
 * breakpoint (R/W 00) is a fault before the instruction; returning to it goes on (RF). Disabled in DR7:
 * nothing. Breakpoints are set with both `mov %drN` and HYPERVISOR_set_debugreg.
 */
#include "console.h"
#include "hypercall.h"
#include "lib.h"

void expect(const char *what, long got, long want);

#define __HYPERVISOR_set_debugreg 8
#define __HYPERVISOR_get_debugreg 9

extern void db_handler(void);
volatile unsigned long db_count, db_rip, db_dr6;
volatile unsigned long watched[2];
extern char after_store[], after_load[], target_fn[];

/* #DB: count it, note the interrupted rip and %dr6 (then clear %dr6's B bits, as a kernel does), return
 * with a native iretq (RPL 3 restored in the frame). rcx/r11 are on the stack first; no error code. */
__asm__(
    ".globl db_handler\n"
    "db_handler:\n"
    "    incq db_count(%rip)\n"
    "    mov 16(%rsp), %rcx\n"
    "    mov %rcx, db_rip(%rip)\n"
    "    push %rax\n"
    "    push %rdi\n"
    "    push %rsi\n"
    "    push %rdx\n"
    "    push %r10\n"
    "    push %r8\n"
    "    mov $9, %eax\n"                   /* get_debugreg(6) */
    "    mov $6, %edi\n"
    "    syscall\n"
    "    mov %rax, db_dr6(%rip)\n"
    "    mov $8, %eax\n"                   /* set_debugreg(6, 0xffff0ff0) */
    "    mov $6, %edi\n"
    "    mov $0xffff0ff0, %esi\n"
    "    syscall\n"
    "    pop %r8\n"
    "    pop %r10\n"
    "    pop %rdx\n"
    "    pop %rsi\n"
    "    pop %rdi\n"
    "    pop %rax\n"
    "    pop %rcx\n"
    "    pop %r11\n"
    "    orq $3, 8(%rsp)\n"
    "    orq $3, 32(%rsp)\n"
    "    iretq\n"
    ".globl target_fn\n"
    "target_fn:\n"
    "    mov $42, %eax\n"
    "    ret\n");

static void store(void)
{
    __asm__ volatile("movq $7, watched(%%rip)\n.globl after_store\nafter_store:\n" ::: "memory");
}

static unsigned long load(void)
{
    unsigned long v;
    __asm__ volatile("movq watched(%%rip), %0\n.globl after_load\nafter_load:\n" : "=r"(v) :: "memory");
    return v;
}

void run_dbreg(void)
{
    static struct trap_info traps[] = { { 1, 0, FLAT_KERNEL_CS, 0 }, { 0, 0, 0, 0 } };
    traps[0].address = (unsigned long)db_handler;
    expect("set_trap_table", HYPERVISOR_set_trap_table(traps), 0);

    /* DR0 = &watched[0], write, 8 bytes, L0: via `mov` to %dr0 and %dr7. */
    unsigned long dr7 = 1 | (1UL << 16) | (2UL << 18);
    __asm__ volatile("mov %0, %%dr0" :: "r"((unsigned long)&watched[0]));
    __asm__ volatile("mov %0, %%dr7" :: "r"(dr7));
    unsigned long back;
    __asm__ volatile("mov %%dr7, %0" : "=r"(back));
    expect("dr7_reads_back", back, dr7 | 0x400);
    store();
    expect("write_bp_fired", db_count, 1);
    expect("write_bp_trap_rip", db_rip == (unsigned long)after_store, 1);
    expect("write_bp_dr6_b0", db_dr6 & 0xf, 1);
    expect("write_bp_dr6_fixed", db_dr6 & ~0xfUL, 0xffff0ff0);
    (void)load();
    expect("write_bp_ignores_read", db_count, 1);
    watched[1] = 3;
    expect("write_bp_other_word", db_count, 1);

    /* DR1 via the hypercall, read/write, 4 bytes: a load fires it, as B1. */
    expect("set_dr1", HYPERCALL(__HYPERVISOR_set_debugreg, 1, (unsigned long)&watched[1]), 0);
    expect("set_dr7_rw", HYPERCALL(__HYPERVISOR_set_debugreg, 7, 4 | (3UL << 20) | (3UL << 22)), 0);
    (void)load();                                   /* watched[0]: DR0 is disabled now */
    expect("disabled_bp_silent", db_count, 1);
    unsigned long v;
    __asm__ volatile("movq watched+8(%%rip), %0" : "=r"(v) :: "memory");
    expect("rw_bp_fired_on_read", db_count, 2);
    expect("rw_bp_dr6_b1", db_dr6 & 0xf, 2);

    /* DR2: an instruction breakpoint on target_fn: a fault at its first instruction, then it runs. */
    expect("set_dr2", HYPERCALL(__HYPERVISOR_set_debugreg, 2, (unsigned long)target_fn), 0);
    expect("set_dr7_exec", HYPERCALL(__HYPERVISOR_set_debugreg, 7, 0x10), 0);
    long r;
    __asm__ volatile("call target_fn" : "=a"(r) :: "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory");
    expect("exec_bp_fired", db_count, 3);
    expect("exec_bp_fault_rip", db_rip == (unsigned long)target_fn, 1);
    expect("exec_bp_dr6_b2", db_dr6 & 0xf, 4);
    expect("exec_bp_function_ran", r, 42);

    /* All off: nothing fires. */
    expect("dr7_off", HYPERCALL(__HYPERVISOR_set_debugreg, 7, 0), 0);
    store();
    __asm__ volatile("call target_fn" : "=a"(r) :: "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory");
    expect("all_off_silent", db_count, 3);
    expect("io_bp_needs_de", HYPERCALL(__HYPERVISOR_set_debugreg, 7, 1 | (2UL << 16)), -1);
}
