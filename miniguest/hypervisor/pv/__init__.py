"""Xen's PV-guest code (xen/arch/x86/pv/): privileged-instruction emulation, trap and callback
hypercalls."""
