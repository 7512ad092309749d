"""sysctl and domctl: the toolstack's hypercalls, as an unprivileged domain meets them.

Xen checks the structure's interface version first (-EACCES when it is not this Xen's: the way a caller
finds the version) and then asks XSM, whose default policy refuses a domU everything here (-EPERM). A domctl
naming a domain that does not exist fails before that with -ESRCH. Nothing is ever performed.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi import errno
from miniguest.abi.xen import HYPERVISOR_domctl, HYPERVISOR_sysctl
from miniguest.hypervisor.hypercall import Hypercall

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

# The versions of the Xen we claim to be (4.19): public/sysctl.h and public/domctl.h.
XEN_SYSCTL_INTERFACE_VERSION = 0x15
XEN_DOMCTL_INTERFACE_VERSION = 0x17
SYSCTL_SIZE = 8 + 128                # cmd, interface_version, union u
DOMCTL_SIZE = 16 + 128               # cmd, interface_version, domain, pad, union u
XEN_DOMCTL_createdomain = 1


def sysctl(vcpu: "Vcpu", arg: int) -> int:
    _, version = struct.unpack_from("<II", vcpu.mem.read(arg, SYSCTL_SIZE))
    if version != XEN_SYSCTL_INTERFACE_VERSION:
        return -errno.EACCES
    return -errno.EPERM                # xsm_sysctl(XSM_PRIV)


def domctl(vcpu: "Vcpu", arg: int) -> int:
    cmd, version, domain = struct.unpack_from("<IIH", vcpu.mem.read(arg, DOMCTL_SIZE))
    if version != XEN_DOMCTL_INTERFACE_VERSION:
        return -errno.EACCES
    if cmd != XEN_DOMCTL_createdomain and domain not in (0, vcpu.domain.domid):
        return -errno.ESRCH            # rcu_lock_domain_by_id: dom0 and ourselves are all there is
    return -errno.EPERM                # xsm_domctl(XSM_OTHER): privileged


HYPERCALLS = (Hypercall(HYPERVISOR_sysctl, "sysctl", sysctl, 1),
              Hypercall(HYPERVISOR_domctl, "domctl", domctl, 1))
