/* Hypercalls through the page Xen fills: `call hypercall_page + 32 * nr`, arguments in
 * rdi, rsi, rdx, r10, r8; the result in rax. The stubs save rcx/r11 (which `syscall` clobbers). */
#ifndef FIRMWARE_HYPERCALL_H
#define FIRMWARE_HYPERCALL_H
#include "xen.h"

extern char hypercall_page[4096];

static inline long _hypercall(unsigned int nr, unsigned long a1, unsigned long a2, unsigned long a3,
                              unsigned long a4, unsigned long a5)
{
    register unsigned long r10 __asm__("r10") = a4;
    register unsigned long r8 __asm__("r8") = a5;
    long res;
    __asm__ volatile ("call *%[entry]"
                      : "=a"(res), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                      : [entry] "r"(hypercall_page + nr * 32)
                      : "memory", "rcx", "r11");
    return res;
}

#define HYPERCALL(nr, ...) _hypercall_args(nr, __VA_ARGS__, 0, 0, 0, 0, 0)
#define _hypercall_args(nr, a, b, c, d, e, ...) \
    _hypercall((nr), (unsigned long)(a), (unsigned long)(b), (unsigned long)(c), (unsigned long)(d), (unsigned long)(e))

static inline long HYPERVISOR_console_io(int cmd, int count, const char *buf)
{ return HYPERCALL(__HYPERVISOR_console_io, cmd, count, buf); }
static inline long HYPERVISOR_xen_version(int cmd, void *arg)
{ return HYPERCALL(__HYPERVISOR_xen_version, cmd, arg); }
static inline long HYPERVISOR_sched_op(int cmd, void *arg)
{ return HYPERCALL(__HYPERVISOR_sched_op, cmd, arg); }
static inline long HYPERVISOR_event_channel_op(int cmd, void *arg)
{ return HYPERCALL(__HYPERVISOR_event_channel_op, cmd, arg); }
static inline long HYPERVISOR_memory_op(unsigned int cmd, void *arg)
{ return HYPERCALL(__HYPERVISOR_memory_op, cmd, arg); }
static inline long HYPERVISOR_mmu_update(struct mmu_update *req, unsigned int count, unsigned int *done,
                                         unsigned int foreigndom)
{ return HYPERCALL(__HYPERVISOR_mmu_update, req, count, done, foreigndom); }
static inline long HYPERVISOR_mmuext_op(struct mmuext_op *op, unsigned int count, unsigned int *done,
                                        unsigned int foreigndom)
{ return HYPERCALL(__HYPERVISOR_mmuext_op, op, count, done, foreigndom); }
static inline long HYPERVISOR_update_va_mapping(unsigned long va, unsigned long pte, unsigned long flags)
{ return HYPERCALL(__HYPERVISOR_update_va_mapping, va, pte, flags); }
static inline long HYPERVISOR_set_trap_table(const struct trap_info *table)
{ return HYPERCALL(__HYPERVISOR_set_trap_table, table); }
static inline long HYPERVISOR_set_callbacks(unsigned long event, unsigned long failsafe, unsigned long syscall)
{ return HYPERCALL(__HYPERVISOR_set_callbacks, event, failsafe, syscall); }
static inline long HYPERVISOR_callback_op(int cmd, void *arg)
{ return HYPERCALL(__HYPERVISOR_callback_op, cmd, arg); }
static inline long HYPERVISOR_set_timer_op(uint64_t timeout)
{ return HYPERCALL(__HYPERVISOR_set_timer_op, timeout); }
static inline long HYPERVISOR_vcpu_op(int cmd, int vcpu, void *arg)
{ return HYPERCALL(__HYPERVISOR_vcpu_op, cmd, vcpu, arg); }
static inline long HYPERVISOR_vm_assist(unsigned int cmd, unsigned int type)
{ return HYPERCALL(__HYPERVISOR_vm_assist, cmd, type); }
static inline long HYPERVISOR_grant_table_op(unsigned int cmd, void *uop, unsigned int count)
{ return HYPERCALL(__HYPERVISOR_grant_table_op, cmd, uop, count); }
static inline long HYPERVISOR_stack_switch(unsigned long ss, unsigned long sp)
{ return HYPERCALL(__HYPERVISOR_stack_switch, ss, sp); }
static inline long HYPERVISOR_set_segment_base(int which, unsigned long base)
{ return HYPERCALL(__HYPERVISOR_set_segment_base, which, base); }
static inline long HYPERVISOR_fpu_taskswitch(int set)
{ return HYPERCALL(__HYPERVISOR_fpu_taskswitch, set); }
static inline long HYPERVISOR_multicall(void *calls, unsigned int nr)
{ return HYPERCALL(__HYPERVISOR_multicall, calls, nr); }

static inline void HYPERVISOR_shutdown(unsigned int reason)
{
    struct sched_shutdown s = { .reason = reason };
    HYPERVISOR_sched_op(SCHEDOP_shutdown, &s);
}

#endif
