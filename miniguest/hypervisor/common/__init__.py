"""Xen's common code (xen/common/): event channels, grant tables, memory_op, scheduling
hypercalls, time, timers, multicall, version, the hypervisor console, domctl/sysctl, vcpu_op."""
