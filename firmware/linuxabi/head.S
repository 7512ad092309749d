/*
 * Start-of-day code of the linuxabi test guest: the Xen ELF notes Linux 6.1 carries (arch/x86/xen/xen-head.S),
 * and no HYPERCALL_PAGE note. Like Linux, the guest brings its own hypercall stubs: `hypercall_page` below is
 * filled at build time with `push %rcx; push %r11; mov $N, %eax; syscall; pop %r11; pop %rcx; ret` in slot N
 * (the same layout as Xen's page, so the common code's `call hypercall_page + 32 * N` works) and Xen never
 * writes it: every hypercall is a bare `syscall` from guest kernel mode.
 */
#define __ASSEMBLY__
#include "xen.h"

#define XEN_ELFNOTE_PAE_MODE         9
#define XEN_ELFNOTE_HV_START_LOW    12
#define XEN_ELFNOTE_L1_MFN_VALID    13
#define XEN_ELFNOTE_SUSPEND_CANCEL  14
#define XEN_ELFNOTE_INIT_P2M        15
#define XEN_ELFNOTE_MOD_START_PFN   16
#define XEN_ELFNOTE_SUPPORTED_FEATURES 17

#define ELFNOTE(type, desc)                                   \
    .pushsection .note.Xen, "a", @note;                       \
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
ELFNOTE(XEN_ELFNOTE_GUEST_VERSION, .asciz "2.6")
ELFNOTE(XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0")
ELFNOTE(XEN_ELFNOTE_VIRT_BASE, .quad VIRT_BASE)
ELFNOTE(XEN_ELFNOTE_INIT_P2M, .quad 0x8000000000)
ELFNOTE(XEN_ELFNOTE_ENTRY, .quad _start)
ELFNOTE(XEN_ELFNOTE_FEATURES, .asciz "!writable_page_tables|pae_pgdir_above_4gb")
ELFNOTE(XEN_ELFNOTE_SUPPORTED_FEATURES, .long 0x8801)
ELFNOTE(XEN_ELFNOTE_PAE_MODE, .asciz "yes")
ELFNOTE(XEN_ELFNOTE_LOADER, .asciz "generic")
ELFNOTE(XEN_ELFNOTE_L1_MFN_VALID, .quad 1; .quad 1)
ELFNOTE(XEN_ELFNOTE_SUSPEND_CANCEL, .long 1)
ELFNOTE(XEN_ELFNOTE_MOD_START_PFN, .long 1)
ELFNOTE(XEN_ELFNOTE_HV_START_LOW, .quad 0xffff800000000000)
ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET, .quad 0)

    .section .text.head, "ax"
    .globl _start
_start:
    cld
    mov     %rsp, boot_entry_rsp(%rip)
    lea     boot_stack_top(%rip), %rsp
    mov     %rsi, %rdi              /* guest_main(struct start_info *) */
    call    guest_main
    ud2

    .balign 4096
    .globl hypercall_page
hypercall_page:
    .set n, 0
    .rept 128
    .balign 32, 0xcc
    push    %rcx
    push    %r11
    mov     $n, %eax
    syscall
    pop     %r11
    pop     %rcx
    ret
    .set n, n + 1
    .endr
    .balign 4096, 0xcc

    .section .bss.stack, "aw", @nobits
    .balign 8
    .globl boot_entry_rsp
boot_entry_rsp:
    .skip 8
    .balign 16
boot_stack:
    .skip 16384
    .globl boot_stack_top
boot_stack_top:
