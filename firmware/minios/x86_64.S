/*
 * minios start-of-day and entry code, following Mini-OS's arch/x86/x86_64.S for a PV guest:
 *
 * - the Xen notes go to a non-allocated SHT_NOTE section (no PT_NOTE segment, no VIRT_BASE note: the
 *   image links at 0, the default), exactly the notes Mini-OS carries;
 * - _start is alone on page 0 (Mini-OS zeroes and unmaps that page once booted); the next page is the
 *   placeholder whose PTE arch_init points at the real shared_info frame; then the hypercall page;
 * - Xen bounces exceptions and event upcalls with {rcx, r11, [error code], rip, cs, rflags, rsp, ss} on
 *   the kernel stack. Every entry pops rcx/r11 back into the registers, so what stays is the native
 *   frame, and builds a struct pt_regs below it;
 * - returns go through HYPERVISOR_IRET: a kernel->kernel return is a native `iretq` (ring 3 to ring 3,
 *   so RPL 3 is ORed into the saved cs and ss), anything else the iret hypercall;
 * - events are re-enabled on the way out inside a "critical region"; an upcall that lands in it is
 *   merged with the frame being restored (Mini-OS's critical_region_fixup).
 */
#define __ASSEMBLY__
#include "xen.h"

#define ELFNOTE(type, desc)                                   \
    .pushsection .note.Xen, "", @note;                        \
    .balign 4;                                                \
    .long 2f - 1f;                                            \
    .long 4f - 3f;                                            \
    .long type;                                               \
1:  .asciz "Xen";                                             \
2:  .balign 4;                                                \
3:  desc;                                                     \
4:  .balign 4;                                                \
    .popsection

ELFNOTE(XEN_ELFNOTE_GUEST_OS, .asciz GUEST_OS)
ELFNOTE(XEN_ELFNOTE_LOADER, .asciz "generic")
ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .quad hypercall_page)
ELFNOTE(XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0")

#define ENTRY(x) .globl x; .type x, @function; x:

/* struct pt_regs offsets (minios.h) */
#define RAX       80
#define ORIG_RAX 120
#define RIP      128
#define CS       136
#define RFLAGS   144
#define RSP      152
/* vcpu_info fields */
#define evtchn_upcall_pending 0
#define evtchn_upcall_mask    1
/* Mini-OS's marker for a frame that must go back through the hypervisor (never set by Xen itself). */
#define NMI_MASK 0x80000000
#define KERNEL_CS_MASK 0xfc

    .section .text.head, "ax"
ENTRY(_start)
    cld
    movq    stack_start(%rip), %rsp
    movq    %rsi, %rdi              /* arch_init(start_info *): rsi is the only register Xen defines */
    call    arch_init
    ud2
stack_start:
    .quad   stack + 2 * (4096 << 2) /* top of setup.c's stack[2 * STACK_SIZE] */

    .balign 4096
    .globl shared_info
shared_info:                        /* remapped to the real shared_info frame by arch_init */
    .fill 4096, 1, 0
    .globl hypercall_page
hypercall_page:                     /* Xen writes the stubs here */
    .fill 4096, 1, 0

    .text
/* Save the registers below the native frame; on entry (%rsp) is the error code slot. */
.macro SAVE_ALL
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

.macro RESTORE_ALL
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
    addq    $8, %rsp                /* error code / orig_rax */
.endm

/* Return to the frame {rip, cs, rflags, rsp, ss} at (%rsp). */
.macro HYPERVISOR_IRET
    testl   $NMI_MASK, 2*8(%rsp)
    jnz     2f
    testb   $3, 1*8(%rsp)           /* saved cs with RPL 3: guest user mode, Xen must switch */
    jnz     2f
    orb     $3, 1*8(%rsp)           /* kernel -> kernel: we run in ring 3, so a native iretq works */
    orb     $3, 4*8(%rsp)
    iretq
2:  andl    $~NMI_MASK, 2*8(%rsp)
    pushq   $0                      /* flags: not in a syscall, restore rcx/r11 */
    jmp     hypercall_page + __HYPERVISOR_iret * 32
.endm

/* Xen's frame without an error code: make room for one. */
.macro zeroentry handler
    popq    %rcx
    popq    %r11
    pushq   $0
    SAVE_ALL
    leaq    \handler(%rip), %rax
    jmp     error_entry
.endm

.macro errorentry handler
    popq    %rcx
    popq    %r11
    SAVE_ALL
    leaq    \handler(%rip), %rax
    jmp     error_entry
.endm

/* do_xxx(struct pt_regs *regs, unsigned long error_code) */
error_entry:
    movq    %rsp, %rdi
    movq    ORIG_RAX(%rsp), %rsi
    movq    $-1, ORIG_RAX(%rsp)
    call    *%rax
    jmp     error_exit

/*
 * The event upcall. Nested upcalls stay on the current stack; the outermost one moves to the per-CPU
 * interrupt stack, whose pointer and nesting count live in the area MSR_GS_BASE points at (events.c).
 */
ENTRY(hypervisor_callback)
    popq    %rcx
    popq    %r11
    pushq   $0
    SAVE_ALL
    movq    %rsp, %rdi
    movq    RIP(%rsp), %rax         /* did we interrupt the exit path's critical region? */
    cmpq    $scrit, %rax
    jb      11f
    cmpq    $ecrit, %rax
    jb      critical_region_fixup
11: movq    %gs:8, %rax             /* irqstackptr */
    incl    %gs:0                   /* irqcount: -1 -> 0 on the outermost upcall */
    cmovzq  %rax, %rsp
    pushq   %rdi
    call    do_hypervisor_callback
    popq    %rsp
    decl    %gs:0

/* Back to the interrupted context. If it ran with events enabled and they are off now, turn them back
   on -- then look for an event that came in meanwhile, and take it at once instead of returning. */
error_exit:
    movl    RFLAGS(%rsp), %eax
    shrl    $9, %eax                /* bit 0: IF of the frame we return to */
    movq    HYPERVISOR_shared_info(%rip), %rsi
    andb    evtchn_upcall_mask(%rsi), %al
    andb    $1, %al
    jnz     restore_all_enable_events
    RESTORE_ALL
    HYPERVISOR_IRET

restore_all_enable_events:
    RESTORE_ALL
    pushq   %rax                    /* one scratch register, popped inside the region */
    movq    HYPERVISOR_shared_info(%rip), %rax
    movb    $0, evtchn_upcall_mask(%rax)
scrit:      /* ---- critical region: an upcall from here to ecrit is merged by the fixup ---- */
    testb   $0xff, evtchn_upcall_pending(%rax)
    jz      12f
    movb    $1, evtchn_upcall_mask(%rax)    /* pending: mask again and take it now */
12: popq    %rax
restore_end:
    jnz     hypervisor_prologue
    HYPERVISOR_IRET
ecrit:      /* ---- end of the critical region ---- */

/* Build the frame Xen would have built and enter the callback. */
hypervisor_prologue:
    pushq   %r11
    pushq   %rcx
    jmp     hypervisor_callback

/*
 * An upcall interrupted the exit path between scrit and ecrit: the registers it saved are the ones being
 * restored (plus rax, still on the interrupted stack if we were before restore_end). Move the saved
 * registers down next to the interrupted frame so the two become one, and handle the event from there.
 */
critical_region_fixup:
    leaq    RIP(%rsp), %rsi         /* end of what we copy: everything below rip */
    movq    RSP(%rsp), %rdi         /* the interrupted rsp: where its frame (or its pushed rax) starts */
    cmpq    $restore_end, %rax
    jae     13f
    movq    (%rdi), %rax            /* rax was still pushed: that is its real value */
    movq    %rax, RAX(%rsp)
    addq    $8, %rdi
13: movq    $RIP/8, %rcx
14: subq    $8, %rsi
    subq    $8, %rdi
    movq    (%rsi), %rax
    movq    %rax, (%rdi)
    loop    14b
    movq    %rdi, %rsp              /* the merged frame */
    andb    $KERNEL_CS_MASK, CS(%rsp)   /* HYPERVISOR_IRET may already have ORed in RPL 3 */
    movq    %rsp, %rdi
    jmp     11b

/* Xen could not load the segment registers (or the frame) we gave it: just return. */
ENTRY(failsafe_callback)
    popq    %rcx
    popq    %r11
    iretq

ENTRY(divide_error)
    zeroentry do_divide_error
ENTRY(debug)
    zeroentry do_debug
ENTRY(int3)
    zeroentry do_int3
ENTRY(overflow)
    zeroentry do_overflow
ENTRY(bounds)
    zeroentry do_bounds
ENTRY(invalid_op)
    zeroentry do_invalid_op
ENTRY(device_not_available)
    zeroentry do_device_not_available
ENTRY(coprocessor_segment_overrun)
    zeroentry do_coprocessor_segment_overrun
ENTRY(invalid_TSS)
    errorentry do_invalid_TSS
ENTRY(segment_not_present)
    errorentry do_segment_not_present
ENTRY(stack_segment)
    errorentry do_stack_segment
ENTRY(general_protection)
    errorentry do_general_protection
ENTRY(page_fault)
    errorentry do_page_fault
ENTRY(spurious_interrupt_bug)
    zeroentry do_spurious_interrupt_bug
ENTRY(coprocessor_error)
    zeroentry do_coprocessor_error
ENTRY(alignment_check)
    errorentry do_alignment_check
ENTRY(simd_coprocessor_error)
    zeroentry do_simd_coprocessor_error

/* A new thread starts here with its data and function pushed by arch_create_thread (sched.c). */
ENTRY(thread_starter)
    popq    %rdi
    popq    %rbx
    pushq   $0                      /* no caller: ends stack walks */
    xorl    %ebp, %ebp
    call    *%rbx
    call    exit_thread

/* arch_switch_threads(unsigned long *prev_sp_ip, unsigned long *next_sp_ip): cooperative switch. */
ENTRY(arch_switch_threads)
    pushq   %rbp
    pushq   %rbx
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    movq    %rsp, (%rdi)
    leaq    1f(%rip), %rax
    movq    %rax, 8(%rdi)
    movq    (%rsi), %rsp
    jmp     *8(%rsi)
1:  popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbx
    popq    %rbp
    ret
