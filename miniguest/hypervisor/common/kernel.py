"""xen_version: who we claim to be. Strings are fixed (no build date) so runs stay byte-identical."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import errno
from miniguest.abi.arch_x86 import HYPERVISOR_VIRT_START
from miniguest.abi.version import (COMPILE_INFO_FIELDS, XEN_CAPABILITIES_INFO_LEN, XEN_CHANGESET_INFO_LEN,
                                   XEN_EXTRAVERSION_LEN, XENFEAT_gnttab_map_avail_bits, XENFEAT_highmem_assist,
                                   XENFEAT_mmu_pt_update_preserve_ad, XENVER_build_id, XENVER_capabilities,
                                   XENVER_changeset, XENVER_commandline, XENVER_compile_info,
                                   XENVER_extraversion, XENVER_get_features, XENVER_guest_handle,
                                   XENVER_pagesize, XENVER_platform_parameters, XENVER_version)
from miniguest.abi.xen import HYPERVISOR_xen_version
from miniguest.hypervisor.decode import DecodeCtx, Decoded, OutputDecoder
from miniguest.hypervisor.hypercall import Hypercall, HypercallError, SubOp, SubOps

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


def _fixed(text: str, size: int) -> bytes:
    raw = text.encode()[:size - 1]
    return raw + b"\0" * (size - len(raw))


def _version(vcpu: "Vcpu", arg: int) -> int:
    return (XEN_MAJOR << 16) | XEN_MINOR


def _write(data: Callable[["Vcpu"], bytes]) -> Callable[["Vcpu", int], int]:
    """A sub-op that copies a fixed structure to the guest's buffer."""
    def handler(vcpu: "Vcpu", arg: int) -> int:
        vcpu.mem.write(arg, data(vcpu))
        return 0
    return handler


def _platform_parameters(vcpu: "Vcpu", arg: int) -> int:
    vcpu.mem.write_u64(arg, HYPERVISOR_VIRT_START)
    return 0


def _get_features(vcpu: "Vcpu", arg: int) -> int:
    idx = struct.unpack("<I", vcpu.mem.read(arg, 4))[0]
    submap = FEATURES_SUBMAP0 if idx == 0 else 0
    vcpu.mem.write(arg, struct.pack("<II", idx, submap))
    return 0


def _privileged(what: str) -> Callable[["Vcpu", int], int]:
    def handler(vcpu: "Vcpu", arg: int) -> int:
        raise HypercallError(-errno.EPERM, f"{what} is for privileged domains")
    return handler


def xen_version(vcpu: "Vcpu", cmd: int, arg: int) -> Optional[int]:
    return SUBOPS.run(cmd & 0xFFFFFFFF, vcpu, arg)


# -- decoders -----------------------------------------------------------------------------------------------
def _version_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    r = ctx.result or 0
    return {"major": r >> 16, "minor": r & 0xFFFF}


def _string_out(key: str, size: int) -> OutputDecoder:
    return lambda ctx, ins: {key: ctx.cstr(ctx.args[1], size)}


def _platform_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    return {"virt_start": ctx.u64(ctx.args[1])}


def _features_in(ctx: DecodeCtx) -> Decoded:
    return {"submap_idx": ctx.u32(ctx.args[1])}


def _features_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    return {"submap": ctx.u32(ctx.args[1] + 4)}


def _handle_out(ctx: DecodeCtx, ins: Decoded) -> Decoded:
    return {"handle": ctx.read(ctx.args[1], 16).hex()}


SUBOPS = SubOps((
    SubOp(XENVER_version, "version", _version, decode_out=_version_out),
    SubOp(XENVER_extraversion, "extraversion", _write(lambda v: _fixed(XEN_EXTRAVERSION, XEN_EXTRAVERSION_LEN)),
          decode_out=_string_out("extraversion", 16)),
    SubOp(XENVER_compile_info, "compile_info",
          _write(lambda v: b"".join(_fixed(COMPILE_INFO[name], size) for name, size in COMPILE_INFO_FIELDS))),
    SubOp(XENVER_capabilities, "capabilities",
          _write(lambda v: _fixed(XEN_CAPABILITIES, XEN_CAPABILITIES_INFO_LEN)),
          decode_out=_string_out("capabilities", 1024)),
    SubOp(XENVER_changeset, "changeset", _write(lambda v: _fixed(XEN_CHANGESET, XEN_CHANGESET_INFO_LEN)),
          decode_out=_string_out("changeset", 64)),
    SubOp(XENVER_platform_parameters, "platform_parameters", _platform_parameters, decode_out=_platform_out),
    SubOp(XENVER_get_features, "get_features", _get_features, decode_in=_features_in, decode_out=_features_out),
    SubOp(XENVER_pagesize, "pagesize", lambda vcpu, arg: 4096),
    SubOp(XENVER_guest_handle, "guest_handle", _write(lambda v: v.domain.handle), decode_out=_handle_out),
    SubOp(XENVER_commandline, "commandline", _privileged("the hypervisor command line")),
    SubOp(XENVER_build_id, "build_id", _privileged("build_id")),
))
HYPERCALLS = (Hypercall(HYPERVISOR_xen_version, "xen_version", xen_version, 2, subop_arg=0, subops=SUBOPS),)
