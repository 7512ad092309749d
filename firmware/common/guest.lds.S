/* Linker script for the sample guests. The image starts at VIRT_BASE; with PHYS_LOAD the load (physical)
   addresses start at 0, as in a Linux kernel, otherwise they equal the virtual ones. */
OUTPUT_FORMAT("elf64-x86-64")
OUTPUT_ARCH(i386:x86-64)
ENTRY(_start)

PHDRS
{
    text PT_LOAD FLAGS(5);
    data PT_LOAD FLAGS(6);
#ifdef NOTES_ALLOC
    note PT_NOTE FLAGS(4);
#endif
}

#ifdef PHYS_LOAD
#define AT_PHYS(x) AT(ADDR(x) - VIRT_BASE)
#else
#define AT_PHYS(x)
#endif

SECTIONS
{
    . = VIRT_BASE;
    _text = .;
    .text : AT_PHYS(.text) { *(.text.head) *(.text .text.*) } :text
    .rodata : AT_PHYS(.rodata) { *(.rodata .rodata.*) } :text
#ifdef NOTES_ALLOC
    .note.Xen : AT_PHYS(.note.Xen) { *(.note.Xen) } :text :note
#endif
    _etext = .;
    . = ALIGN(4096);
    .data : AT_PHYS(.data) { *(.data .data.*) } :data
    _edata = .;
    .bss : AT_PHYS(.bss) { *(.bss .bss.*) *(COMMON) } :data
    . = ALIGN(4096);
    _end = .;
#ifndef NOTES_ALLOC
    .note.Xen 0 : { *(.note.Xen) }
#endif
    /DISCARD/ : { *(.comment) *(.note.GNU-stack) *(.note.gnu.*) *(.eh_frame) }
}
