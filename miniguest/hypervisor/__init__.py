"""The Xen side: domains, vCPUs on Unicorn, and one module per hypercall family."""
