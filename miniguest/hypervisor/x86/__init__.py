"""Xen's x86 code (xen/arch/x86/): page types and page-table hypercalls, Xen's own address-space
slots, physdev_op."""
