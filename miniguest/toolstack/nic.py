"""Virtual network interfaces in the store, as libxl's device_nic_add writes them (libxl_nic.c).

    /local/domain/<domid>/device/vif/<devid>/   backend, backend-id, state, handle, mac, trusted; mtu (dom0's)
    /local/domain/0/backend/vif/<domid>/<devid>/ frontend, frontend-id, online, state, script, mac, bridge,
                                                 handle, type, hotplug-status
What a `vif = [ ... ]` entry means for the host side (passt, a socket) is netback's business; this is only
the store part every vif has.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from miniguest.toolstack.device import device_generic_add

if TYPE_CHECKING:
    from miniguest.backends.xenstore import Dom0Store

MTU_DEFAULT = 1500            # LIBXL_DEVICE_NIC_MTU_DEFAULT


@dataclass
class NicSpec:
    """libxl_device_nic, the fields the store part uses."""
    devid: int = 0
    mac: Optional[str] = None
    bridge: str = "xenbr0"
    script: str = "vif-bridge"
    nictype: str = "vif"
    mtu: int = MTU_DEFAULT
    ip: Optional[str] = None
    trusted: bool = True


def default_mac(domain_uuid: str, devid: int) -> str:
    """libxl's 00:16:3e:xx:xx:xx with the low half random; derived here from the domain's uuid and the devid
    so the same configuration gives the same address on every run."""
    r = hashlib.sha256(f"{domain_uuid}/{devid}".encode()).digest()
    return "00:16:3e:%02x:%02x:%02x" % (r[0] & 0x7F, r[1], r[2])


def device_nic_add(store: "Dom0Store", domid: int, nic: NicSpec, domain_uuid: str = "") -> int:
    """Write the vif's frontend and backend directories; returns the devid."""
    mac = nic.mac or default_mac(domain_uuid, nic.devid)
    script = nic.script if nic.script.startswith("/") else f"/etc/xen/scripts/{nic.script}"
    back = {"script": script, "mac": mac}
    if nic.ip:
        back["ip"] = nic.ip
    if nic.mtu != MTU_DEFAULT:
        back["mtu"] = str(nic.mtu)
    back.update({"bridge": nic.bridge, "handle": str(nic.devid), "type": nic.nictype,
                 "hotplug-status": ""})
    front = {"handle": str(nic.devid), "mac": mac, "trusted": "1" if nic.trusted else "0"}
    device_generic_add(store, domid, "vif", nic.devid, back, front, ro_front={"mtu": str(nic.mtu)})
    return nic.devid
