/* Guest user mode for the `usermode` scenario. A 64-bit PV guest kernel and its user space both run at
 * CPL3; Xen switches between the two contexts (page tables, GS base, stack) on HYPERVISOR_iret to a frame
 * with RPL 3 and on every trap/syscall from user mode. */
#define __ASSEMBLY__
#include "xen.h"

    .text
/* enter_user(rip, rsp): HYPERVISOR_iret to user mode. The iret stub pushes rcx, r11 and rax. */
    .globl enter_user
enter_user:
    pushq   $FLAT_USER_SS
    pushq   %rsi                        /* rsp */
    pushq   $0x202                      /* rflags: IF set -> events enabled after the switch */
    pushq   $FLAT_USER_CS               /* RPL 3: return to guest user mode */
    pushq   %rdi                        /* rip */
    pushq   $0                          /* flags */
    jmp     hypercall_page + __HYPERVISOR_iret * 32

/* User code: syscall(1) to say hello, int3 (a trap from user mode), then syscall(0) to finish. */
    .globl user_code
user_code:
    mov     $1, %eax
    mov     $0x1111, %rdi
    syscall
    mov     %rax, user_result(%rip)     /* the kernel's answer, through rax */
    int3
    mov     $0, %eax
    syscall
    ud2                                 /* never returns here */

/* Syscall callback, entered in guest kernel mode on the kernel stack with {rcx, r11, rip, cs, rflags,
 * rsp, ss}; rcx/r11 hold the user's return rip/rflags as the CPU left them. */
    .globl syscall_entry
syscall_entry:
    mov     %rsp, %rdi                  /* frame */
    mov     %rax, %rsi                  /* syscall number */
    call    on_syscall                  /* returns the value for the user's rax (never returns for 0) */
    /* Back to user with HYPERVISOR_iret + VGCF_in_syscall: rcx/r11 are not restored from the frame. */
    mov     %rax, %rdx
    pop     %rcx
    pop     %r11
    pushq   $VGCF_in_syscall
    mov     %rdx, %rax
    jmp     hypercall_page + __HYPERVISOR_iret * 32

/* #BP from user mode: Xen's frame is on the kernel stack given to stack_switch. */
    .globl user_int3_entry
user_int3_entry:
    mov     %rsp, %rdi
    call    on_user_int3
    pop     %rcx
    pop     %r11
    pushq   $0
    jmp     hypercall_page + __HYPERVISOR_iret * 32
