"""Network interfaces for a domain: `--net` on the command line and xl.cfg's `vif = [ ... ]`, as xl reads
them (docs/man/xl-network-configuration.5.pod), turned into vifs: the store part as libxl's device_nic_add
writes it (toolstack/nic.py) and the host side netback plugs each vif into.

    --net user[,KEY=VALUE...]          passt: DHCP, DNS, TCP/UDP to the host (its gateway is the host)
    --net socket:PATH[,KEY=VALUE...]   QEMU's length-prefixed frame stream on a Unix socket: connect to PATH
                                       if something listens there, else listen on PATH for one peer
    --net none[,KEY=VALUE...]          a vif whose frames go nowhere
    vif = [ 'mac=00:16:3e:01:02:03', 'mac=...,net=socket:/tmp/seg' ]   (xl.cfg; net= defaults to user)

Keys (both forms): mac (default: 00:16:3e plus three bytes derived from the domain's uuid and devid, so a
configuration always gets the same address), devid (default: the position in the list), pcap=FILE (the vif's
frames as a pcap file), mtu, and in xl.cfg the host side as net=user|socket:PATH|none. xl's bridge, script,
ip, type, model, vifname, rate, vlan, gatewaydev and trusted are accepted; backend must be dom0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from miniguest.backends.netback import LinkError, netback, parse_link, parse_mac
from miniguest.toolstack.nic import NicSpec, device_nic_add
from miniguest.toolstack.xlcfg import ConfigError

if TYPE_CHECKING:
    from miniguest.toolstack.libxl import Guest

XL_KEYS = ("bridge", "script", "ip", "type", "model", "vifname", "rate", "vlan", "gatewaydev", "netdev",
           "trusted", "untrusted", "backend")


@dataclass
class VifSpec:
    net: str = "user"                  # the host side: user | socket:PATH | none
    mac: Optional[str] = None
    devid: Optional[int] = None
    pcap: Optional[str] = None
    mtu: int = 1500
    trusted: bool = True


def _host_side(text: str, where: str) -> str:
    if text in ("user", "none") or (text.startswith("socket:") and len(text) > 7):
        return text
    raise ConfigError(f"{where}: unknown network host side {text!r} (user, socket:PATH or none)")


def _apply(spec: VifSpec, key: str, value: Optional[str], where: str) -> None:
    if key == "mac":
        if value is None or parse_mac(value) is None or int(value.split(":")[0], 16) & 1:
            raise ConfigError(f"{where}: mac={value}: not a unicast MAC address (xx:xx:xx:xx:xx:xx)")
        spec.mac = value.lower()
    elif key == "devid":
        if value is None or not value.isdigit() or int(value) > 65535:
            raise ConfigError(f"{where}: devid={value}: not a device number")
        spec.devid = int(value)
    elif key == "pcap":
        if not value:
            raise ConfigError(f"{where}: pcap= needs a file name")
        spec.pcap = value
    elif key == "mtu":
        if value is None or not value.isdigit() or not 68 <= int(value) <= 65535:
            raise ConfigError(f"{where}: mtu={value}: not an MTU (68..65535)")
        spec.mtu = int(value)
    elif key == "net":
        spec.net = _host_side(value or "", where)
    elif key == "backend":
        if value not in ("0", "Domain-0"):
            raise ConfigError(f"{where}: backend={value}: only dom0 serves vifs here")
    elif key in ("trusted", "untrusted"):
        spec.trusted = key == "trusted"
    elif key in XL_KEYS:
        pass
    else:
        raise ConfigError(f"{where}: unknown vif key {key!r}")


def _pairs(text: str, where: str) -> list[tuple[str, Optional[str]]]:
    if "\0" in text:
        raise ConfigError(f"{where}: contains a NUL character")
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        out.append((key.strip(), value.strip() if sep else None))
    return out


def parse_net_option(text: str) -> VifSpec:
    """`--net user|socket:PATH|none[,key=value...]`."""
    first, _, rest = text.partition(",")
    spec = VifSpec(net=_host_side(first.strip(), f"--net {text}"))
    for key, value in _pairs(rest, f"--net {text}"):
        if key == "net":
            raise ConfigError(f"--net {text}: the host side is the first word")
        _apply(spec, key, value, f"--net {text}")
    return spec


def parse_vif_entry(text: object, where: str) -> VifSpec:
    """One string of xl.cfg's vif list."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: a vif entry must be a string")
    spec = VifSpec()
    for key, value in _pairs(text, where):
        if value is None and key not in ("trusted", "untrusted"):
            raise ConfigError(f"{where}: {key!r} needs a value (key=value)")
        _apply(spec, key, value, where)
    return spec


def parse_vif_list(value: object, path: str) -> list[VifSpec]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: vif must be a list of strings")
    return [parse_vif_entry(v, f"{path}: vif[{i}]") for i, v in enumerate(value)]


def add_vifs(domain: "Guest", specs: list[VifSpec]) -> None:
    """Plug each vif into its host side and add it to the store (the frontend finds it at boot).
    ConfigError if a host side cannot be started (nothing is left running)."""
    if not specs:
        return
    assert domain.store is not None
    driver = netback(domain.host, domain.store)
    used = {d for (dom, d) in driver.host_sides if dom == domain.domid}
    plugged: list[int] = []
    try:
        for i, spec in enumerate(specs):
            devid = spec.devid if spec.devid is not None else min(d for d in range(len(used) + 1)
                                                                     if d not in used)
            if devid in used:
                raise ConfigError(f"vif devid {devid} is used twice")
            used.add(devid)
            try:
                link = parse_link(spec.net)
                driver.plug(domain, devid, link, spec.pcap)
            except LinkError as e:
                raise ConfigError(str(e)) from None
            plugged.append(devid)
            device_nic_add(domain.store, domain.domid,
                           NicSpec(devid=devid, mac=spec.mac, mtu=spec.mtu, trusted=spec.trusted),
                           domain_uuid=str(domain.uuid))
    except Exception:
        for devid in plugged:
            driver.unplug(domain.domid, devid)
        raise
