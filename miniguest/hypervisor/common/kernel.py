"""xen_version: who we claim to be. Strings are fixed (no build date) so runs stay byte-identical."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from miniguest.abi import errno
from miniguest.abi.arch_x86 import HYPERVISOR_VIRT_START
from miniguest.abi.version import (COMPILE_INFO_FIELDS, XEN_CAPABILITIES_INFO_LEN, XEN_CHANGESET_INFO_LEN,
                                   XEN_EXTRAVERSION_LEN, XENFEAT_gnttab_map_avail_bits, XENFEAT_highmem_assist,
                                   XENFEAT_mmu_pt_update_preserve_ad, XENVER_build_id, XENVER_capabilities,
                                   XENVER_changeset, XENVER_commandline, XENVER_compile_info,
                                   XENVER_extraversion, XENVER_get_features, XENVER_guest_handle,
                                   XENVER_pagesize, XENVER_platform_parameters, XENVER_version)
from miniguest.abi.xen import HYPERVISOR_xen_version
from miniguest.hypervisor.hypercall import HypercallError, UnknownSubop, hypercall

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

XEN_MAJOR = 4
XEN_MINOR = 19
XEN_EXTRAVERSION = ".0-miniguest"
XEN_CHANGESET = "miniguest 0.1.0"
XEN_CAPABILITIES = "xen-3.0-x86_64"
COMPILE_INFO = {"compiler": "miniguest (Python)", "compile_by": "miniguest", "compile_domain": "",
                "compile_date": "Thu Jan  1 00:00:00 UTC 2026"}
FEATURES_SUBMAP0 = ((1 << XENFEAT_mmu_pt_update_preserve_ad) | (1 << XENFEAT_highmem_assist)
                    | (1 << XENFEAT_gnttab_map_avail_bits))

NAMES = {XENVER_version: "version", XENVER_extraversion: "extraversion", XENVER_compile_info: "compile_info",
         XENVER_capabilities: "capabilities", XENVER_changeset: "changeset",
         XENVER_platform_parameters: "platform_parameters", XENVER_get_features: "get_features",
         XENVER_pagesize: "pagesize", XENVER_guest_handle: "guest_handle", XENVER_commandline: "commandline",
         XENVER_build_id: "build_id"}


def _fixed(text: str, size: int) -> bytes:
    raw = text.encode()[:size - 1]
    return raw + b"\0" * (size - len(raw))


@hypercall(HYPERVISOR_xen_version, 2, subop_arg=0, subop_names=NAMES)
def xen_version(vcpu: "Vcpu", cmd: int, arg: int) -> int:
    mem = vcpu.mem
    cmd &= 0xFFFFFFFF
    if cmd == XENVER_version:
        return (XEN_MAJOR << 16) | XEN_MINOR
    if cmd == XENVER_extraversion:
        mem.write(arg, _fixed(XEN_EXTRAVERSION, XEN_EXTRAVERSION_LEN))
        return 0
    if cmd == XENVER_compile_info:
        mem.write(arg, b"".join(_fixed(COMPILE_INFO[name], size) for name, size in COMPILE_INFO_FIELDS))
        return 0
    if cmd == XENVER_capabilities:
        mem.write(arg, _fixed(XEN_CAPABILITIES, XEN_CAPABILITIES_INFO_LEN))
        return 0
    if cmd == XENVER_changeset:
        mem.write(arg, _fixed(XEN_CHANGESET, XEN_CHANGESET_INFO_LEN))
        return 0
    if cmd == XENVER_platform_parameters:
        mem.write_u64(arg, HYPERVISOR_VIRT_START)
        return 0
    if cmd == XENVER_get_features:
        idx = struct.unpack("<I", mem.read(arg, 4))[0]
        submap = FEATURES_SUBMAP0 if idx == 0 else 0
        mem.write(arg, struct.pack("<II", idx, submap))
        return 0
    if cmd == XENVER_pagesize:
        return 4096
    if cmd == XENVER_guest_handle:
        mem.write(arg, vcpu.domain.handle)
        return 0
    if cmd == XENVER_commandline:
        raise HypercallError(-errno.EPERM, "the hypervisor command line is for privileged domains")
    if cmd == XENVER_build_id:
        raise HypercallError(-errno.EPERM, "build_id is for privileged domains")
    raise UnknownSubop(cmd)

