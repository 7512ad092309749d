/*
 * Start-of-day code shared by the sample guests: the Xen ELF notes, the entry point, the hypercall page
 * and a boot stack.
 *
 * Xen enters _start at CPL3 in 64-bit mode on its own bootstrap page tables, with RSI = start_info and RSP
 * at the top of the bootstrap stack, events masked. We switch to our own stack and call guest_main().
 *
 * Notes go to an allocated section with a PT_NOTE segment (NOTES_ALLOC), or -- as Mini-OS does -- to a
 * non-allocated SHT_NOTE section that only the section table shows.
 */
#define __ASSEMBLY__
#include "xen.h"

#ifdef NOTES_ALLOC
#define NOTE_FLAGS "a"
#else
#define NOTE_FLAGS ""
#endif

#define ELFNOTE(type, desc)                                   \
    .pushsection .note.Xen, NOTE_FLAGS, @note;                \
    .balign 4;                                                \
    .long 2f - 1f;                                            \
    .long 4f - 3f;                                            \
    .long type;                                               \
1:  .asciz "Xen";                                             \
2:  .balign 4;                                                \
3:  desc;                                                     \
4:  .balign 4;                                                \
    .popsection

#ifdef LEGACY_GUEST_INFO
/* The pre-ELF-note interface: one string in a `__xen_guest` section. HYPERCALL_PAGE is a page number
 * relative to VIRT_BASE; with ELF_PADDR_OFFSET absent, libelf defaults it to VIRT_BASE. */
    .section __xen_guest, ""
    .ascii "GUEST_OS=" GUEST_OS ",XEN_VER=xen-3.0,LOADER=generic,VIRT_BASE=" LEGACY_VIRT_BASE
    .asciz ",HYPERCALL_PAGE=0x1"
#else
ELFNOTE(XEN_ELFNOTE_GUEST_OS, .asciz GUEST_OS)
ELFNOTE(XEN_ELFNOTE_GUEST_VERSION, .asciz "1")
ELFNOTE(XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0")
ELFNOTE(XEN_ELFNOTE_LOADER, .asciz "generic")
ELFNOTE(XEN_ELFNOTE_VIRT_BASE, .quad VIRT_BASE)
#ifdef PADDR_OFFSET
ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET, .quad PADDR_OFFSET)
#endif
ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .quad hypercall_page)
#endif

    .section .text.head, "ax"
    .globl _start
_start:
    cld
    mov     %rsp, boot_entry_rsp(%rip)  /* where Xen's bootstrap stack was, for tests */
    lea     boot_stack_top(%rip), %rsp
    mov     %rsi, %rdi              /* guest_main(struct start_info *) */
    call    guest_main
    ud2                             /* guest_main does not return */

    /* Xen writes the hypercall stubs here; until then every byte is `ret` (0xc3). */
    .balign 4096
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0xc3

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
