/* Scenario `usermode`: enter guest user mode with HYPERVISOR_iret, take a syscall and a trap from there,
 * and check Xen's frames (stack switched to the stack_switch stack, cs with RPL 3, rip after the insn). */
#include "selftest.h"

extern void enter_user(unsigned long rip, unsigned long rsp);
extern void user_code(void), syscall_entry(void), user_int3_entry(void);
unsigned long user_result;
static unsigned long user_stack[512] __attribute__((aligned(16)));
static unsigned long kernel_stack[1024] __attribute__((aligned(16)));
static unsigned long resume_rsp;

unsigned long on_syscall(unsigned long *frame, unsigned long nr)
{
    /* frame: rcx, r11, rip, cs, rflags, rsp, ss */
    expect("syscall_on_kernel_stack", (unsigned long)frame >= (unsigned long)kernel_stack &&
           (unsigned long)frame < (unsigned long)(kernel_stack + 1024), 1);
    expect("syscall_frame_cs_rpl", frame[3] & 3, 3);
    expect("syscall_frame_rsp_is_user", frame[5] >= (unsigned long)user_stack &&
           frame[5] <= (unsigned long)(user_stack + 512), 1);
    expect("syscall_rcx_is_return_rip", frame[0] == frame[2], 1);
    if (nr == 1)
        return 0x2222;
    /* nr 0: done. Drop the user context and resume the kernel where enter_user was called. */
    printk("usermode: back in the kernel for good\n");
    __asm__ volatile("mov %0, %%rsp; ret" :: "r"(resume_rsp));
    __builtin_unreachable();
}

void on_user_int3(unsigned long *frame)
{
    /* frame: rcx, r11, rip, cs, rflags, rsp, ss */
    expect("int3_from_user_cs_rpl", frame[3] & 3, 3);
    expect("int3_rip_after_insn", frame[2] > (unsigned long)user_code, 1);
    expect("int3_user_result_seen", user_result, 0x2222);
}

__attribute__((noinline)) static void run_user(void)
{
    __asm__ volatile("mov %%rsp, %0" : "=m"(resume_rsp));
    resume_rsp -= 8;          /* after our `call enter_user` pushes its return address */
    enter_user((unsigned long)user_code, (unsigned long)(user_stack + 512));
}

void run_usermode(void)
{
    struct trap_info traps[] = { { 3, 3, FLAT_KERNEL_CS, (unsigned long)user_int3_entry }, { 0, 0, 0, 0 } };
    struct callback_register cb = { .type = CALLBACKTYPE_syscall, .flags = CALLBACKF_mask_events,
                                    .address = (unsigned long)syscall_entry };
    struct mmuext_op op = { .cmd = MMUEXT_NEW_USER_BASEPTR, .arg1.mfn = virt_to_mfn((void *)si->pt_base) };
    expect("set_trap_table", HYPERVISOR_set_trap_table(traps), 0);
    expect("register_syscall_callback", HYPERVISOR_callback_op(CALLBACKOP_register, &cb), 0);
    expect("stack_switch", HYPERVISOR_stack_switch(FLAT_KERNEL_SS, (unsigned long)(kernel_stack + 1024)), 0);
    expect("new_user_baseptr", HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF), 0);
    run_user();
    expect("user_result", user_result, 0x2222);
}
