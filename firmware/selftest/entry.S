/* Exception entry stubs for the bench scenarios. Xen's frame on entry: rcx, r11, rip, cs, rflags, rsp, ss.
 * The native return is what Mini-OS does for kernel-to-kernel returns: put RPL 3 back into cs/ss and iretq
 * (ring 3 to ring 3); the other returns through HYPERVISOR_iret with flags 0. */
    .text
    .globl int3_native_entry
int3_native_entry:
    incq    int3_count(%rip)
    pop     %rcx
    pop     %r11
    orq     $3, 8(%rsp)
    orq     $3, 32(%rsp)
    iretq

    .globl int3_hypercall_entry
int3_hypercall_entry:
    incq    int3_count(%rip)
    pop     %rcx
    pop     %r11
    pushq   $0                      /* flags; the iret stub pushes rcx, r11 and rax on top */
    jmp     hypercall_page + 23 * 32
