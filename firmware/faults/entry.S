/*
 * Exception and event entry points of the faults guest.
 *
 * Xen enters a handler with {rcx, r11, [error code], rip, cs, rflags, rsp, ss} on the kernel stack; rcx
 * and r11 are clobbered, everything else is as interrupted. Each stub pops the interrupted rcx/r11 back,
 * gives vectors without an error code a zero in that slot, pushes its vector and saves the registers, so
 * C gets one struct frame (faults.c) it may edit. The way out is always the iret hypercall: registers
 * back, vector and error code dropped, then {flags, rip, cs, rflags, rsp, ss} for hypercall_page's iret
 * stub, which pushes rcx, r11 and rax itself.
 */
#define __ASSEMBLY__
#include "xen.h"

.macro SAVE_REGS
    cld
    pushq   %rdi
    pushq   %rsi
    pushq   %rdx
    pushq   %rcx
    pushq   %rax
    pushq   %r8
    pushq   %r9
    pushq   %r10
    pushq   %r11
    pushq   %rbx
    pushq   %rbp
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
.endm

.macro STUB vec, has_ec
    .globl trap_\vec
trap_\vec:
    popq    %rcx
    popq    %r11
    .if !\has_ec
    pushq   $0
    .endif
    pushq   $\vec
    jmp     trap_common
.endm

    .text
trap_common:
    SAVE_REGS
    movq    %rsp, %rdi
    call    trap_handler            /* void trap_handler(struct frame *) */
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbp
    popq    %rbx
    popq    %r11
    popq    %r10
    popq    %r9
    popq    %r8
    popq    %rax
    popq    %rcx
    popq    %rdx
    popq    %rsi
    popq    %rdi
    addq    $16, %rsp               /* vector, error code */
    pushq   $0                      /* iret flags: restore rcx and r11 too */
    jmp     hypercall_page + __HYPERVISOR_iret * 32

    /* The CPU exceptions (error code for 8, 10-14 and 17), then software-interrupt vectors. */
    STUB 0, 0
    STUB 1, 0
    STUB 3, 0
    STUB 4, 0
    STUB 5, 0
    STUB 6, 0
    STUB 7, 0
    STUB 10, 1
    STUB 11, 1
    STUB 12, 1
    STUB 13, 1
    STUB 14, 1
    STUB 16, 0
    STUB 17, 1
    STUB 19, 0
    STUB 0x81, 0
    STUB 0x82, 0
    STUB 0x83, 0
    STUB 0x84, 0
    /* The event upcall: no error code; 0x100 is not a vector, it tells C this is an upcall. */
    STUB 0x100, 0
    /* Xen could not return to a frame we gave it (bad segments): recorded as 0x101. */
    STUB 0x101, 0

/* Run fn on a fresh stack: call_on_stack(top, fn, arg) (the crash-in-pf case uses a guarded stack). */
    .globl call_on_stack
call_on_stack:
    movq    %rdi, %rsp
    movq    %rdx, %rdi
    call    *%rsi
    ud2
